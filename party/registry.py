"""Handler discovery: every TaskBase subclass defined in ``party/tasks/`` or in PARTY_TASKS sources.

The registry is the only lookup for a handler name that arrives over HTTP or from the store: a name
is matched against classes already imported at start-up, never imported on demand. The registry
also holds the worker hooks (``on_worker_start``/``on_worker_stop``) of the modules it loaded, and
checks the schedules handlers declare: a bad one stops the process that loads it, naming the handler
and the expression (``running_limits`` checks their ``max_running`` the same way). Imports only
``handler``, ``schedule`` and ``errors``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import RegistryError
from .handler import WORKER_HOOKS, TaskBase
from .schedule import Declaration, ScheduleError

BUILTIN_PACKAGE = "party.tasks"


class Registry:
    """Handler name → class, built once at start-up."""

    def __init__(
        self,
        handlers: dict[str, type[TaskBase]] | None = None,
        *,
        start_hooks: Iterable[Callable[[], Any]] = (),
        stop_hooks: Iterable[Callable[[], Any]] = (),
    ) -> None:
        self._handlers: dict[str, type[TaskBase]] = dict(handlers or {})
        #: Called once in each worker process before its first run / when it stops normally.
        self.start_hooks: list[Callable[[], Any]] = list(start_hooks)
        self.stop_hooks: list[Callable[[], Any]] = list(stop_hooks)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, name: str) -> type[TaskBase] | None:
        """The handler class registered under ``name``, or None."""
        return self._handlers.get(name)

    @property
    def names(self) -> list[str]:
        """Registered handler names, sorted."""
        return sorted(self._handlers)

    def declarations(self) -> dict[str, Declaration | None]:
        """Each handler's declared schedule (None for one that declares none), by name.

        Raises ``RegistryError`` naming the handler and the expression for one that cannot be used.
        """
        declared: dict[str, Declaration | None] = {}
        for name, cls in sorted(self._handlers.items()):
            try:
                declared[name] = cls.declaration()
            except ScheduleError as exc:
                raise RegistryError(f"{exc} (in {_where(cls)})") from None
        return declared

    def register(self, cls: type[TaskBase]) -> None:
        """Add one class; a second class under the same name, or a schedule that cannot be used,
        is a RegistryError naming them."""
        name = cls.__name__
        try:
            cls.declaration()
        except ScheduleError as exc:
            raise RegistryError(f"{exc} (in {_where(cls)})") from None
        existing = self._handlers.get(name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"two handlers are named {name!r}: {_where(existing)} and {_where(cls)}; "
                "rename one of them (the handler's name is its class name)"
            )
        self._handlers[name] = cls


def discover(sources: Iterable[str] = ()) -> Registry:
    """Import ``party/tasks/`` and each extra source and register the handlers they define.

    A source is an importable module name, a ``.py`` file, or a directory of ``.py`` files. Only
    classes defined in a module are taken from it, so a handler imported elsewhere is found once.
    """
    registry = Registry()
    modules = list(_package_modules(BUILTIN_PACKAGE))
    for source in sources:
        source = source.strip()
        if source:
            modules.extend(_load_source(source))
    for module in modules:
        for cls in _handlers_defined_in(module):
            registry.register(cls)
    loaded = {module.__name__ for module in modules}
    for kind, fn in WORKER_HOOKS:
        hooks = registry.start_hooks if kind == "start" else registry.stop_hooks
        if getattr(fn, "__module__", None) in loaded and fn not in hooks:
            hooks.append(fn)
    return registry


def _handlers_defined_in(module: ModuleType) -> Iterator[type[TaskBase]]:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, TaskBase) and obj is not TaskBase and obj.__module__ == module.__name__:
            yield obj


def _package_modules(package_name: str) -> Iterator[ModuleType]:
    package = importlib.import_module(package_name)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        yield _import(f"{package_name}.{info.name}")


def _load_source(source: str) -> list[ModuleType]:
    path = Path(source).expanduser()
    if source.endswith(".py") or path.is_dir():
        if path.is_dir():
            return [_load_file(p) for p in sorted(path.glob("*.py")) if not p.name.startswith("_")]
        if not path.is_file():
            raise RegistryError(f"PARTY_TASKS names {source!r}, which is not a file")
        return [_load_file(path)]
    module = _import(source)
    if hasattr(module, "__path__"):  # a package: load its modules, as for party/tasks/
        return [module, *_package_modules(source)]
    return [module]


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise RegistryError(f"cannot import handler module {name!r}: {exc!r}") from exc


def _load_file(path: Path) -> ModuleType:
    path = path.resolve()
    # A stable name per file, so the same file loaded twice (or in every worker) is one module.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"party_tasks_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot load handlers from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RegistryError(f"cannot load handlers from {path}: {exc!r}") from exc
    return module


def _where(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    origin = getattr(module, "__file__", None) or cls.__module__
    return f"{cls.__qualname__} in {origin}"


def running_limits(registry: Registry) -> dict[str, int]:
    """``{handler name: max_running}`` of the handlers that declare one; ``RegistryError``
    names a handler whose ``max_running`` is not an integer >= 1 (or None)."""
    limits: dict[str, int] = {}
    for name in registry.names:
        cap = getattr(registry.get(name), "max_running", None)
        if cap is None:
            continue
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise RegistryError(
                f"handler {name}: max_running must be an integer >= 1 or None, got {cap!r}"
            )
        limits[name] = cap
    return limits
