"""The in-process handle of ``party.open``: add, read and delete tasks without the server.

A Python application that reaches the store adds tasks under exactly the rules of ``POST /tasks``,
through the same code: ``admission.check_items`` for each item's shape, then ``TaskQueue.add`` for
its values, the singleton and all or nothing; the store wakes idle workers after its commit, as for
an add over HTTP. Tasks come back as ``BlockingHTTPClient`` returns them: dicts of the wire's
fields with naive UTC datetimes for the times. Errors are the ``TaskException`` subclasses the
server answers with, with the same message and item index.

One handle serves any number of threads (the stores are thread-safe) and survives ``fork``: before
a fork the parent closes its store (once no call is in progress), and a process that finds itself
with another pid than the one that opened the store opens its own (a gunicorn master may open the
handle before forking its workers). Imports ``config``, ``registry``, ``stores``, ``queue`` and
``admission``; never the server (tornado) nor the scheduler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from . import config
from .admission import check_items, check_key
from .errors import ValidationError
from .model import TASK_FIELDS, Kind, Task, Wire
from .queue import TaskQueue
from .registry import Registry, discover
from .stores import Store, open_store

__all__ = ["LocalQueue", "open_queue", "task_dict"]

logger = logging.getLogger(__name__)

#: How long a fork waits for the calls in progress before it leaves the store open (the child
#: then never touches the parent's connection, and opens its own all the same).
FORK_WAIT = 10.0


def open_queue(store: str | None = None) -> LocalQueue:
    """``party.open``: a handle on the store ``store`` names (else ``PARTY_STORE``, else the
    default), validating against the handlers of ``party/tasks/`` and ``PARTY_TASKS``.

    Raises ``ConfigError`` for a bad setting, ``RegistryError`` when the handlers cannot be
    loaded and ``StoreUnavailable`` when the store cannot be opened.
    """
    settings = config.load({"store": store}, environ=config.environ_of(("store", "tasks")))
    return LocalQueue(settings.store, discover(settings.tasks))


class LocalQueue:
    """A queue handle in this process: ``add``, ``add_many``, ``get``, ``delete``, ``close``.

    Also a context manager that closes it. ``url`` is the store's URL, ``registry`` the handlers
    items are checked against.
    """

    def __init__(self, url: str, registry: Registry) -> None:
        self.url = url
        self.registry = registry
        # Guards the fields below; calls hold it only to enter and leave (the store has its own).
        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._calls = 0
        self._forking = False
        self._closed = False
        self._pid = os.getpid()
        self._queue: TaskQueue | None = TaskQueue(open_store(url), registry)
        _register(self)

    def __repr__(self) -> str:
        return f"<LocalQueue {self._queue.store if self._queue else self.url}>"

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the calls -----------------------------------------------------------------------------

    def add(
        self,
        party: str,
        data: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Add one task of handler ``party``; return it as stored.

        ``timestamp`` is a datetime (naive means UTC) or any form ``POST /tasks`` accepts; None
        means now. Raises ``ValidationError`` or ``Conflict`` (a live recurring singleton). With
        ``idempotency_key``, as ``add_many``.
        """
        item: dict[str, Any] = {"party": party}
        if data is not None:
            item["data"] = data
        if timestamp is not None:
            item["timestamp"] = timestamp
        return self._add([item], idempotency_key)[0]

    def add_many(
        self, items: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Add ``{"party", "data", "timestamp"}`` items all or nothing; return them in order.

        Raises ``ValidationError`` (``index`` names the item) or ``Conflict``; nothing is then
        written. No batch limit applies (``--max-batch`` bounds a request); an empty batch adds
        nothing. With ``idempotency_key`` (1 to 255 visible ASCII characters), a repeat within
        24 h with equal items returns the first call's tasks and adds nothing, and the key with
        other items raises ``KeyMismatch``, as ``Idempotency-Key`` does over HTTP (the keys are
        shared with it; items are compared as canonical JSON, not as request bytes).
        """
        if isinstance(items, Mapping | str):
            raise ValidationError(
                f"add_many takes a list of task objects, got a {type(items).__name__}; "
                "add() adds one task"
            )
        items = list(items)
        return self._add(items, idempotency_key) if items else []

    def _add(self, items: list[Any], key: str | None = None) -> list[dict[str, Any]]:
        check_items(items)
        if key is not None:
            return self._add_once(items, check_key(key))
        queue = self._enter()
        try:
            tasks = queue.add(items)
        finally:
            self._leave()
        # As over HTTP, the answer's data is a copy of what was stored, not the caller's object.
        return [task_dict(task, copy_data=True) for task in tasks]

    def _add_once(self, items: list[Any], key: str) -> list[dict[str, Any]]:
        """``_add`` under an idempotency key: the answer kept is the tasks' JSON."""
        body = json.dumps(items, sort_keys=True, separators=(",", ":"), default=_iso)
        digest = hashlib.sha256(body.encode()).hexdigest()

        def encode(tasks: list[Task]) -> bytes:
            return json.dumps([task_dict(t) for t in tasks], default=_iso).encode()

        queue = self._enter()
        try:
            answer = queue.recall(key, digest) or queue.add_once(key, digest, items, encode)
        finally:
            self._leave()
        return [_times_back(task) for task in json.loads(answer)]

    def get(self, task_id: str) -> dict[str, Any]:
        """The task with this id; ``ValidationError`` if malformed, ``NotFound`` if unknown."""
        with self._using() as queue:
            return task_dict(queue.get(task_id))

    def delete(self, task_id: str) -> dict[str, Any]:
        """Mark the task ``deleted`` (idempotent); return it. ``Conflict`` for a completed task,
        ``NotFound`` for an unknown id."""
        with self._using() as queue:
            return task_dict(queue.delete(task_id))

    def close(self) -> None:
        """Close the store once the calls in progress end; the handle is not used afterwards."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._calls:
                self._state.wait()
            queue, self._queue = self._queue, None
        if queue is not None and self._pid == os.getpid():
            queue.store.close()
        with _hooks:
            _handles.discard(self)

    # -- threads and forks ---------------------------------------------------------------------

    @contextmanager
    def _using(self) -> Iterator[TaskQueue]:
        """This process's queue, counted as in use until the block ends (a fork waits for it)."""
        queue = self._enter()
        try:
            yield queue
        finally:
            self._leave()

    def _enter(self) -> TaskQueue:
        """This process's queue, counted as in use until ``_leave`` (a fork or close waits)."""
        with self._lock:  # the common case, without the Condition's Python-level methods
            queue = self._queue
            if (
                queue is not None
                and not (self._forking or self._closed)
                and self._pid == os.getpid()
            ):
                self._calls += 1
                return queue
        with self._state:
            while self._forking:
                self._state.wait()
            if self._closed:
                raise ValueError("this queue handle is closed")
            queue = self._queue
            if queue is None or self._pid != os.getpid():
                queue = self._reopen()
            self._calls += 1
            return queue

    def _leave(self) -> None:
        with self._lock:
            self._calls -= 1
            if not self._calls and (self._forking or self._closed):
                self._state.notify_all()

    def _reopen(self) -> TaskQueue:
        """Open this process's own store (after a fork, or after a fork closed it); hold _state."""
        pid = os.getpid()
        if self._pid != pid and self._queue is not None:
            # The parent's connection, left open because a call was in progress at the fork:
            # never used nor closed here (closing it could disturb the parent's locks).
            _inherited.append(self._queue.store)
        self._queue, self._pid = None, pid
        self._queue = TaskQueue(open_store(self.url), self.registry)
        return self._queue

    def _before_fork(self) -> None:
        """Close the store in the parent before a fork, so that no connection crosses it."""
        with self._state:
            if self._closed or self._pid != os.getpid():
                return
            self._forking = True
            deadline = time.monotonic() + FORK_WAIT
            while self._calls and self._state.wait(max(0.0, deadline - time.monotonic())):
                pass
            if self._calls:
                logger.warning(
                    "fork while a call on %r ran for over %g s: its store stays open in the parent",
                    self,
                    FORK_WAIT,
                )
                return
            queue, self._queue = self._queue, None
        if queue is not None:
            queue.store.close()

    def _after_fork(self, child: bool) -> None:
        if child:
            # The other threads are gone in the child; so is whoever held this lock.
            self._lock = threading.Lock()
            self._state = threading.Condition(self._lock)
            self._calls = 0
            self._forking = False
            return
        with self._state:
            self._forking = False
            self._state.notify_all()


_TIME_FIELDS = tuple(
    spec.wire_name for spec in TASK_FIELDS if spec.kind == Kind.TIME and spec.wire != Wire.NEVER
)


def _times_back(task: dict[str, Any]) -> dict[str, Any]:
    """A task of a kept answer with its times as datetimes again (naive UTC, as written)."""
    for name in _TIME_FIELDS:
        if isinstance(task.get(name), str):
            task[name] = datetime.fromisoformat(task[name])
    return task


def _iso(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def task_dict(task: Task, *, copy_data: bool = False) -> dict[str, Any]:
    """``task`` as ``BlockingHTTPClient`` returns it: the fields the wire shows (``model.Wire``),
    under their wire names, with naive UTC datetimes where the wire has ISO strings. With
    ``copy_data``, ``data`` is a copy (as a decoded HTTP answer would be)."""
    return _task_dict(task, copy_data, _plain)


def _compile_task_dict() -> Callable[[Task, bool, Callable[[Any], Any]], dict[str, Any]]:
    """``task_dict`` written out once from ``model.TASK_FIELDS``, as the stores' codecs are: a
    loop over the table would cost three times as much per task."""
    always, when_set, when_run = [], [], []
    for spec in TASK_FIELDS:
        value = f"task.{spec.name}"
        if spec.kind is Kind.STATUS:
            value += ".value"
        elif spec.name == "data":
            value = f"(plain({value}) if copy_data else {value})"
        if spec.wire is Wire.ALWAYS:
            always.append(f"{spec.wire_name!r}: {value}")
        elif spec.wire is Wire.SET:
            when_set.append(
                f"    if task.{spec.name} is not None:\n        out[{spec.wire_name!r}] = {value}"
            )
        elif spec.wire is Wire.RUN:
            when_run.append(f"        out[{spec.wire_name!r}] = {value}")
    source = "\n".join(
        [
            "def task_dict(task, copy_data, plain):",
            f"    out = {{{', '.join(always)}}}",
            *(["    if task.started_on is not None:", *when_run] if when_run else []),
            *when_set,
            "    return out",
        ]
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<party.local.task_dict>", "exec"), namespace)
    return namespace["task_dict"]  # type: ignore[no-any-return]


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """A copy of storable data as JSON would give it back: tuples become lists, subclasses
    (an IntEnum, an OrderedDict) their plain JSON type. Cheaper than a JSON round trip."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    return value  # unreachable for data the queue accepted (storable refuses anything else)


_task_dict = _compile_task_dict()

# Open handles, for the fork hooks; weak, so a handle dropped without close() is not kept.
_handles: weakref.WeakSet[LocalQueue] = weakref.WeakSet()
# Stores inherited across a fork that could not close them first: kept referenced so they are
# never finalized (closed) in the child.
_inherited: list[Store] = []
_hooks = threading.Lock()
_hooked = False


def _register(handle: LocalQueue) -> None:
    global _hooked
    with _hooks:
        _handles.add(handle)
        if not _hooked:
            os.register_at_fork(
                before=_before_fork,
                after_in_parent=lambda: _after_fork(child=False),
                after_in_child=lambda: _after_fork(child=True),
            )
            _hooked = True


def _before_fork() -> None:
    _hooks.acquire()  # held across the fork: no handle is registered half-way in the child
    for handle in list(_handles):
        handle._before_fork()


def _after_fork(child: bool) -> None:
    global _hooks
    for handle in list(_handles):
        handle._after_fork(child)
    if child:
        _hooks = threading.Lock()
    else:
        _hooks.release()
