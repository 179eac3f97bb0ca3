"""Next-slot arithmetic of declared schedules: cron expressions in a time zone, and fixed intervals.

Pure functions of naive UTC datetimes (Party's time everywhere): no store, no clock of its own.
A cron expression is read by ``cronsim`` (its one home; no parser is written here) in an IANA time
zone (``zoneinfo``) and every slot comes back as naive UTC. Across the changes of daylight saving
time cronsim follows Debian's cron: a time that does not exist on a spring-forward day runs at the
first valid instant after it, and a time that exists twice on a fall-back day runs once (the
first). That holds for expressions with a fixed minute and hour (``30 2 * * *``,
``0 9 * * MON-FRI``, the ``@daily`` family); one whose minute or hour field starts with ``*``
(``*/15 * * * *``, ``@hourly``) runs on every real hour of the day instead, as Debian's cron does.
Imports nothing of Party above ``timestamps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: The ``@`` names a schedule may use, and the five fields each stands for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DEFAULT_TIMEZONE = "UTC"


class ScheduleError(ValueError):
    """A schedule that cannot be used: a bad cron expression, an unknown time zone, a bad
    interval, or both ``schedule`` and ``every``. The message says which and what is accepted."""


def cron_fields(expr: str) -> str:
    """The five fields of ``expr`` (an ``@`` alias expanded); ``ScheduleError`` unless it is a
    valid five-field cron expression."""
    if not isinstance(expr, str):
        raise ScheduleError(f"a cron expression is a string, got {type(expr).__name__}")
    text = " ".join(expr.split())
    fields = ALIASES.get(text.lower(), text)
    if len(fields.split()) != 5:
        raise ScheduleError(
            f"bad cron expression {expr!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or one of {', '.join(sorted(ALIASES))}"
        )
    try:
        CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    return fields


def zone(name: str) -> tzinfo:
    """The time zone of an IANA name (``Europe/Berlin``); ``ScheduleError`` when unknown."""
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"a time zone is an IANA name such as 'Europe/Berlin', got {name!r}")
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'"
        ) from None


def next_cron(expr: str, after: datetime, tz: str | tzinfo = DEFAULT_TIMEZONE) -> datetime:
    """The first time of cron ``expr``, read in ``tz``, strictly after ``after`` (naive UTC, as is
    the answer). ``ScheduleError`` for a bad expression or time zone, or one that never fires."""
    fields = cron_fields(expr)
    where = zone(tz) if isinstance(tz, str) else tz
    start = after.replace(tzinfo=UTC).astimezone(where)
    # cronsim drops microseconds, then steps one second: 10:00:00.5 gives a slot after 10:00:00,
    # which is still strictly after ``after`` since slots fall on whole minutes.
    slots = CronSim(fields, start)
    try:
        slot = next(slots).astimezone(UTC).replace(tzinfo=None)
        # cronsim reads a fixed time in local wall time: from inside the repeated hour of a
        # fall-back day it finds the hour's first pass, already gone, so step on past it.
        while slot <= after:
            slot = next(slots).astimezone(UTC).replace(tzinfo=None)
    except StopIteration:
        raise ScheduleError(f"cron expression {expr!r} never fires") from None
    return slot


def next_every(slot: datetime, every: timedelta, now: datetime) -> datetime:
    """``slot + k*every`` for the smallest k >= 1 that lies after ``now``: a fixed cadence that
    never drifts, missed slots skipped, never replayed."""
    if every <= timedelta(0):
        raise ScheduleError(f"an interval must be positive, got {every}")
    k = max(1, math.floor((now - slot) / every) + 1)
    when = slot + k * every
    while when <= now:  # guards float rounding of the division above
        k += 1
        when = slot + k * every
    return when


def interval(value: Any) -> timedelta:
    """``every`` as a timedelta: positive seconds (int or float) or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ScheduleError(
            f"every must be seconds (a number) or a timedelta, got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ScheduleError(f"every must be a positive interval, got {value!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Declaration:
    """A schedule declared on a handler class: a cron ``schedule`` in ``timezone``, or ``every``
    seconds, and the ``data`` of its task. Built by ``declare``, which validates it."""

    schedule: str | None
    every: float | None
    timezone: str
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def text(self) -> str:
        """What marks the task this declaration created (its ``schedule`` field): equal texts,
        equal declarations, so a change in code is seen as a change of text."""
        if self.schedule is not None:
            return f"cron {self.schedule} {self.timezone}"
        return f"every {self.every:g}s"

    def first(self, now: datetime) -> datetime:
        """The slot of a schedule that has no task yet: the next cron time after ``now``, or
        ``now`` itself for an interval (it runs at once, then every ``every`` seconds)."""
        if self.schedule is not None:
            return next_cron(self.schedule, now, self.timezone)
        return now

    def after(self, slot: datetime, now: datetime) -> datetime:
        """The next slot once ``slot`` has run at ``now``: the first cron time strictly after
        ``slot`` that lies after ``now`` (missed slots are skipped), or ``slot + k*every``."""
        if self.schedule is not None:
            return next_cron(self.schedule, max(slot, now), self.timezone)
        return next_every(slot, timedelta(seconds=self.every or 0), now)

    def moved(self, last_run: datetime | None, now: datetime) -> datetime:
        """Where a task moves when the declaration changed: the next slot of the new one after
        ``now``; for an interval, on its cadence from the last run when there was one."""
        if self.schedule is None and last_run is not None:
            return next_every(last_run, timedelta(seconds=self.every or 0), now)
        if self.schedule is None:
            return now + timedelta(seconds=self.every or 0)
        return self.first(now)

    def record(self) -> dict[str, Any]:
        """The declaration as a scheduler's heartbeat record carries it (JSON)."""
        return {
            "schedule": self.schedule,
            "every": self.every,
            "timezone": self.timezone,
            "data": self.data,
            "text": self.text,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Declaration:
        """The declaration of a heartbeat record's entry (``record``'s inverse)."""
        tz = record.get("timezone") or DEFAULT_TIMEZONE
        return cls(record.get("schedule"), record.get("every"), tz, record.get("data") or {})


def latest(records: Iterable[Mapping[str, Any]]) -> dict[str, Declaration]:
    """Each handler's declaration among schedulers' heartbeat records (their ``schedules``): the
    record started last wins (ties by id), as the ensure pass decides a rolling deploy."""
    chosen: dict[str, tuple[tuple[str, str], Declaration]] = {}
    for record in records:
        order = (str(record.get("started") or ""), str(record.get("id") or ""))
        for party, entry in (record.get("schedules") or {}).items():
            if party not in chosen or chosen[party][0] < order:
                chosen[party] = (order, Declaration.from_record(entry))
    return {party: decl for party, (_, decl) in chosen.items()}


def declare(
    schedule: Any = None, every: Any = None, timezone: Any = None, data: Any = None
) -> Declaration | None:
    """Validate a handler's ``schedule``/``every``/``timezone``/``schedule_data``; None when it
    declares neither. ``ScheduleError`` says what is wrong."""
    if schedule is None and every is None:
        return None
    if schedule is not None and every is not None:
        raise ScheduleError(
            f"declares both schedule = {schedule!r} and every = {every!r}: keep one of them"
        )
    tz = DEFAULT_TIMEZONE if timezone is None else timezone
    zone(tz)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScheduleError(f"schedule_data must be a dict, got {type(data).__name__}")
    if schedule is not None:
        cron_fields(schedule)
        return Declaration(" ".join(schedule.split()), None, tz, data)
    return Declaration(None, interval(every).total_seconds(), tz, data)
