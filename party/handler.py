"""TaskBase, the class every handler inherits, and the collector behind ``on_complete(tasks)``.

A handler only records intentions (the next run, follow-up tasks); it never touches a store. The
runner reads those intentions and the queue applies them. ``run`` and ``on_complete`` may be
``async def``. Also the worker hooks (``on_worker_start``, ``on_worker_stop``): functions a handler
module registers to set up and tear down what its handlers share in a worker process (a database
client opened after the fork); the registry collects those of the modules it loads. A class that
declares ``schedule`` (cron) or ``every`` (an interval) is recurring, and its default
``on_complete`` queues its next slot (``schedule``'s arithmetic). Imports only ``model``,
``schedule`` and ``timestamps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from .model import NewTask, Task
from .schedule import Declaration, ScheduleError, declare, next_cron
from .timestamps import parse_timestamp, system_now

#: Every worker hook registered so far, in order: ("start" | "stop", function).
WORKER_HOOKS: list[tuple[str, Callable[[], Any]]] = []

_Hook = TypeVar("_Hook", bound=Callable[[], Any])


def on_worker_start(fn: _Hook) -> _Hook:
    """Decorator: call ``fn()`` once in each worker process after the fork, before its first run
    (an ``async def`` runs on the worker's event loop). If it raises, that worker stops with the
    error logged and the pool starts a new one after a growing delay."""
    WORKER_HOOKS.append(("start", fn))
    return fn


def on_worker_stop(fn: _Hook) -> _Hook:
    """Decorator: call ``fn()`` once when a worker process stops normally (not when it is
    killed or crashes)."""
    WORKER_HOOKS.append(("stop", fn))
    return fn


class FollowUps:
    """The ``tasks`` argument of ``on_complete``: ``tasks.add(party, data=None, timestamp=None)``
    queues a follow-up task once the run is recorded as complete."""

    def __init__(self) -> None:
        self.added: list[NewTask] = []

    def add(self, party: str, data: dict[str, Any] | None = None, timestamp: Any = None) -> NewTask:
        """Queue a task of handler ``party`` (a class name) after this run completes."""
        when = None if timestamp is None else parse_timestamp(timestamp)
        task = NewTask(party=party, data={} if data is None else data, timestamp=when)
        self.added.append(task)
        return task


class TaskBase:
    """Base class of every handler; the handler's name is its class name.

    Subclasses override ``run`` (its JSON-able return value is kept as the task's result) and, for
    recurring tasks, ``on_complete``. Policy is set with class attributes:

    - ``max_attempts``: failed attempts before the task is ``failed`` for good (default 6);
    - ``retry_delay``: seconds, or ``callable(attempts) -> seconds``, before a retry (default 0);
    - ``timeout``: seconds a run may take before it is killed and counted as failed (default none);
    - ``max_running``: most runs of this handler at once across every scheduler on the store
      (default none: no limit); a due task beyond it waits, enforced by the claim;
    - ``is_recurring``: the task re-queues itself from ``on_complete`` and is a singleton per data;
    - ``schedule`` (a cron expression read in ``timezone``, default UTC) or ``every`` (seconds or
      a timedelta): a declared schedule. The class is then recurring, every scheduler that loads
      it keeps one task of it queued (with ``schedule_data``, default {}), and ``on_complete``
      queues the next slot unless overridden.

    During a run: ``_id``, ``timestamp``, ``last_run_on``, ``attempts``, ``is_recurring``, ``data``.
    """

    max_attempts: ClassVar[int] = 6
    retry_delay: ClassVar[float | Callable[[int], float]] = 0
    timeout: ClassVar[float | None] = None
    max_running: ClassVar[int | None] = None
    is_recurring: ClassVar[bool] = False
    schedule: ClassVar[str | None] = None
    every: ClassVar[float | timedelta | None] = None
    timezone: ClassVar[str] = "UTC"
    schedule_data: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.schedule is not None or cls.every is not None:
            cls.is_recurring = True  # a declared schedule implies it

    @classmethod
    def declaration(cls) -> Declaration | None:
        """The schedule this class declares (None without ``schedule`` and ``every``).

        Raises ``ScheduleError`` naming the class and the expression when it cannot be used (a
        bad cron expression or time zone, a bad interval, both ``schedule`` and ``every``).
        """
        try:
            return declare(cls.schedule, cls.every, cls.timezone, cls.schedule_data)
        except ScheduleError as exc:
            raise ScheduleError(f"handler {cls.__name__}: {exc}") from None

    def __init__(self, task: Task) -> None:
        self._id: str = task.id
        self.timestamp: datetime = task.timestamp
        self.last_run_on: datetime | None = task.last_run_on
        self.attempts: int = task.attempts
        self.data: dict[str, Any] = task.data
        self._next_run: datetime | None = None

    def run(self) -> Any:
        """Do the work. Raise to fail this attempt; the return value is kept as the result."""
        raise NotImplementedError(f"{type(self).__name__} must define run()")

    def on_complete(self, tasks: FollowUps) -> None:
        """Called after every successful run; recurring tasks call ``schedule_next_run`` here.

        For a declared schedule the default queues the next slot: the next cron time strictly
        after the slot just run, or ``timestamp + k*every``; missed slots are skipped.
        """
        cls = type(self)
        if cls.schedule is None and cls.every is None:
            return  # nothing declared (most handlers): no declaration to build at every run
        declared = cls.declaration()
        if declared is not None:
            self._next_run = declared.after(self.timestamp, system_now())

    def schedule_next_run(
        self,
        minutes: float | None = None,
        timestamp: datetime | None = None,
        cron: str | None = None,
    ) -> datetime:
        """Re-queue this task after the run, on a fixed cadence, at an exact time or on a cron.

        ``minutes=N``: at ``self.timestamp + k*N`` minutes for the smallest k >= 1 in the future, so
        the cadence never drifts and missed slots are skipped, not replayed. ``timestamp=T``: at T.
        ``cron="0 9 * * MON-FRI"``: at its first time after this run's slot that lies in the future,
        read in the class's ``timezone``. Returns the time chosen.
        """
        if sum(arg is not None for arg in (minutes, timestamp, cron)) != 1:
            raise ValueError("schedule_next_run takes exactly one of minutes=, timestamp= or cron=")
        if timestamp is not None:
            self._next_run = parse_timestamp(timestamp)
            return self._next_run
        if cron is not None:
            try:
                self._next_run = next_cron(cron, max(self.timestamp, system_now()), self.timezone)
            except ScheduleError as exc:
                raise ValueError(f"{type(self).__name__}.schedule_next_run: {exc}") from None
            return self._next_run
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
            raise ValueError(f"minutes must be a positive number, got {minutes!r}")
        try:
            step = timedelta(minutes=minutes)
        except OverflowError:
            step = timedelta(0)
        if not timedelta(0) < step < timedelta(days=365_000):
            raise ValueError(f"minutes must be from a microsecond to 1,000 years, got {minutes!r}")
        now = system_now()
        k = max(1, math.floor((now - self.timestamp) / step) + 1)
        next_run = self.timestamp + k * step
        while next_run <= now:  # guards float rounding of the division above
            k += 1
            next_run = self.timestamp + k * step
        self._next_run = next_run
        return next_run

    @classmethod
    def retry_delay_for(cls, attempts: int) -> float:
        """Seconds to wait before retrying after ``attempts`` failed runs."""
        delay = cls.retry_delay
        value = delay(attempts) if callable(delay) else delay
        return max(0.0, float(value or 0))
