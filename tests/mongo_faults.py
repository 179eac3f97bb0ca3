"""A collection that fails on purpose: raises a chosen pymongo error before, inside or after a
chosen call, or runs a hook first (a competing scheduler). Issue 16's defects need failovers,
dropped answers and races that mongomock alone never produces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    method: str
    when: str  # "before" (nothing applied), "after" (applied, answer lost), "inside" (part applied)
    error: BaseException | None
    times: int = 1
    skip: int = 0  # calls let through before this fault fires
    hook: Callable[..., Any] | None = None  # run before the call (when error is None: only that)
    keep: int = 1  # "inside": how many of an update_many's ids are updated before the error
    match: Callable[..., bool] | None = None  # fire only on calls whose arguments it accepts


class FaultyCollection:
    """Wraps a pymongo or mongomock collection; everything not planned passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def fail(self, method: str, when: str, error: BaseException | None = None, **kw: Any) -> Fault:
        fault = Fault(method, when, error, **kw)
        self.faults.append(fault)
        return fault

    def called(self, method: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for name, a, k in self.calls if name == method]

    def _take(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Fault | None:
        for fault in self.faults:
            if fault.method != method or fault.times <= 0:
                continue
            if fault.match is None or fault.match(*args, **kwargs):
                if fault.skip:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            fault = self._take(name, args, kwargs)
            if fault is None:
                return attr(*args, **kwargs)
            if fault.hook is not None:
                fault.hook()
            if fault.error is None:
                return attr(*args, **kwargs)
            if fault.when == "before":
                raise fault.error
            if fault.when == "inside" and name == "update_many":
                query = dict(args[0])
                ids = query["_id"]["$in"][: fault.keep]
                attr({**query, "_id": {"$in": ids}}, *args[1:], **kwargs)
                raise fault.error
            attr(*args, **kwargs)
            raise fault.error

        return call
