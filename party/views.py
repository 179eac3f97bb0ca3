"""The reads of the queue, apart from its transitions: pages of tasks, stats, the next due time,
the live schedulers and why a task is not running (``waiting``).

``TaskQueue`` keeps every state change; what only looks lives here, so the server, the dashboard
and the metrics read through one place. ``Live`` is one read of the live schedulers' heartbeat
records (``Store.schedulers``): built once per request or list (the server caches it for about a
second), it answers ``waiting`` for any number of tasks without another query. Knows nothing of
HTTP, processes or a specific store: imports ``stores.base``, ``model``, ``registry``, ``errors``
and ``timestamps`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .errors import ValidationError
from .model import Status, Task, owner_of
from .registry import Registry
from .stores.base import OrderKey, Store
from .timestamps import format_timestamp, system_now

#: Seconds between two beats of a scheduler (``scheduler.heartbeat`` writes at this pace).
BEAT_EVERY = 2.0
#: A scheduler is dead after three missed beats.
DEAD_AFTER = 3 * BEAT_EVERY
#: The reasons of ``waiting``, first wins when several apply (PRODUCT.md, "More HTTP API").
REASONS = ("running", "no_handler", "scheduled", "retry_delay", "limited", "due")
#: The most tasks a text search in data reads (the newest of the listed status).
SEARCH_SCAN = 10_000
_ENDED = (Status.COMPLETED, Status.FAILED, Status.DELETED)


def is_live(record: Mapping[str, Any], now: datetime) -> bool:
    """True when a heartbeat record is of a live scheduler: not stopped, and its last beat within
    three of its beats (``DEAD_AFTER`` for the default pace)."""
    if record.get("stopped"):
        return False
    every = record.get("beat_every") or BEAT_EVERY
    return record["heartbeat"] >= now - timedelta(seconds=3 * float(every))


@dataclass(frozen=True)
class Live:
    """What the live schedulers tell, read once: their records, the handlers they can run, who
    runs which task, and the handlers at their ``max_running`` (``limited``)."""

    at: datetime
    schedulers: tuple[dict[str, Any], ...] = ()
    limited: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        handlers = {name for record in self.schedulers for name in record.get("handlers", ())}
        runs = {
            run["_id"]: (record, run)
            for record in self.schedulers
            for run in record.get("running", ())
            if isinstance(run, dict) and "_id" in run
        }
        object.__setattr__(self, "handlers", frozenset(handlers))
        object.__setattr__(self, "runs", runs)

    handlers: frozenset[str] = field(init=False)
    runs: Mapping[str, tuple[dict[str, Any], dict[str, Any]]] = field(init=False)

    def waiting(self, task: Task, now: datetime | None = None) -> dict[str, Any] | None:
        """Why ``task`` is not running, or what it runs on: ``{"reason", "until", "detail"}``
        with times as ISO strings; None for a completed, failed or deleted task."""
        return waiting(task, self, self.at if now is None else now)


def waiting(task: Task, live: Live, now: datetime) -> dict[str, Any] | None:
    """The ``waiting`` of ``task`` at ``now`` given the live schedulers (``REASONS`` order)."""
    status = task.status
    if status in _ENDED:
        return None
    if status == Status.RUNNING:
        return _reason("running", task.lease_expires, _running_detail(task, live))
    if task.party not in live.handlers:
        if live.schedulers:
            detail = (
                f"no live scheduler has the handler {task.party!r}: start one whose "
                "PARTY_TASKS loads it"
            )
        else:
            detail = f"no scheduler is live to run the handler {task.party!r}"
        return _reason("no_handler", None, detail)
    if task.timestamp > now:
        until = max(task.timestamp, task.run_at)
        return _reason("scheduled", until, f"scheduled for {format_timestamp(until)}")
    if task.run_at > now:
        return _reason(
            "retry_delay",
            task.run_at,
            f"attempt {task.attempts} failed; "
            f"the retry waits until {format_timestamp(task.run_at)}",
        )
    limit = live.limited.get(task.party)
    if limit is not None:
        return _reason(
            "limited",
            None,
            f"{task.party} is at its max_running of {limit}; it runs when one of those ends",
        )
    due_for = max((now - task.run_at).total_seconds(), 0.0)
    return _reason("due", None, f"due for {due_for:.1f} s, waiting for a free worker")


def _reason(reason: str, until: datetime | None, detail: str) -> dict[str, Any]:
    return {"reason": reason, "until": format_timestamp(until), "detail": detail}


def _running_detail(task: Task, live: Live) -> str:
    found = live.runs.get(task.id)
    if found is not None:
        record, run = found
        return (
            f"running on worker {run.get('worker')} (pid {run.get('pid')}) of scheduler "
            f"{record['id']} on {record.get('host')} since {run.get('since')}"
        )
    owner = owner_of(task.lease)
    held = f" held by {owner}" if owner else ""
    return f"running under a lease{held} (a force-run, or a run not yet in a heartbeat)"


class Views:
    """The reads over one store. ``clock`` returns naive UTC now (tests step it); ``registry``
    (optional) tells each handler's ``max_running`` for the ``limited`` reason."""

    def __init__(
        self,
        store: Store,
        registry: Registry | None = None,
        *,
        clock: Callable[[], datetime] = system_now,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock

    # -- tasks ---------------------------------------------------------------------------------

    def list(
        self,
        *,
        status: Status | str | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        """A page of tasks in queue order; pass the last task's ``order_key`` as ``after``."""
        return list_tasks(self.store, status=status, party=party, limit=limit, after=after)

    def next_run_at(self) -> datetime | None:
        """When the earliest queued task becomes due (None when nothing is queued)."""
        return self.store.next_run_at()

    def search(
        self,
        text: str,
        *,
        status: Status | str | None = None,
        party: str | None = None,
        limit: int = 100,
        scan: int = SEARCH_SCAN,
        after: OrderKey | None = None,
    ) -> tuple[list[Task], int, OrderKey | None]:
        """Tasks whose data (as JSON) holds ``text``, among at most ``scan`` of the list in queue
        order after ``after`` (indexed pages of 1000): the matches (at most ``limit``), how many
        were read, and where to go on (None: the list ended or ``limit`` matched)."""
        import json

        needle = text.lower()
        found: list[Task] = []
        read = 0
        while read < scan and len(found) < limit:
            page = self.list(status=status, party=party, limit=min(1000, scan - read), after=after)
            for task in page:
                if needle in json.dumps(task.data, ensure_ascii=False, default=str).lower():
                    found.append(task)
                    if len(found) == limit:
                        break
            read += len(page)
            if len(page) < min(1000, scan - read + len(page)) or not page:
                return found, read, None
            after = page[-1].order_key
        return found, read, None if len(found) >= limit else after

    # -- counts --------------------------------------------------------------------------------

    def stats(self, live: Live | None = None) -> dict[str, Any]:
        """Counts per status and per party, due tasks and the oldest one's age, ``no_handler``
        (queued tasks no live scheduler can run) and ``pruned`` (tasks removed by retention, when
        the store counts them; 0 until then)."""
        now = self.clock()
        stats = self.store.stats(now)
        oldest = stats.pop("oldest_due")
        stats["oldest_due_seconds"] = None if oldest is None else (now - oldest).total_seconds()
        if live is None:
            live = self.live(now, counts=stats)
        stats["no_handler"] = sum(
            counts.get("queued", 0)
            for party, counts in stats["parties"].items()
            if party not in live.handlers
        )
        stats.setdefault("pruned", 0)
        return stats

    # -- schedulers ----------------------------------------------------------------------------

    def schedulers(self, *, live: bool = True, now: datetime | None = None) -> list[dict]:
        """The heartbeat records of the live schedulers (every record when ``live`` is False),
        oldest start first, each with its ``heartbeat`` time."""
        now = now or self.clock()
        if not live:
            return self.store.schedulers()
        # Records beating at a slower pace than the default are still found within a minute.
        since = now - timedelta(seconds=max(DEAD_AFTER, 60.0))
        return [r for r in self.store.schedulers(since) if is_live(r, now)]

    def live(self, now: datetime | None = None, *, counts: Mapping[str, Any] | None = None) -> Live:
        """One read of the live schedulers, for ``waiting`` of any number of tasks.

        ``limited`` needs the running count of each handler that declares ``max_running``: read
        from ``counts`` (a ``stats`` answer) when given, else from the store's counts, and only
        when some handler declares one.
        """
        now = now or self.clock()
        records = tuple(self.schedulers(now=now))
        capped = self._capped()
        limited: dict[str, int] = {}
        if capped:
            parties = (counts or self.store.stats(now))["parties"]
            limited = {
                name: cap
                for name, cap in capped.items()
                if parties.get(name, {}).get("running", 0) >= cap
            }
        return Live(at=now, schedulers=records, limited=limited)

    def _capped(self) -> dict[str, int]:
        """Handler name -> ``max_running`` for the handlers that declare one."""
        if self.registry is None:
            return {}
        capped = {}
        for name in self.registry.names:
            cap = getattr(self.registry.get(name), "max_running", None)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
                capped[name] = cap
        return capped

    # -- run counters --------------------------------------------------------------------------

    def run_totals(self) -> dict[str, dict[str, int]]:
        """Runs by handler and outcome, summed over every scheduler record, live and past."""
        return sum_runs(self.store.schedulers())


def list_tasks(
    store: Store,
    *,
    status: Status | str | None = None,
    party: str | None = None,
    limit: int = 100,
    after: OrderKey | None = None,
) -> list[Task]:
    """A page of ``store``'s tasks in queue order; ``ValidationError`` for a bad filter."""
    if status is not None:
        try:
            status = Status(status)
        except ValueError:
            accepted = ", ".join(s.value for s in Status)
            raise ValidationError(
                f"unknown status {status!r}; expected one of {accepted}", field="status"
            ) from None
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise ValidationError(f"limit must be 1..1000, got {limit!r}", field="limit")
    return store.query(status=status, party=party, limit=limit, after=after)


def sum_runs(records: Iterable[Mapping[str, Any]], key: str = "runs") -> dict[str, dict[str, int]]:
    """``{party: {name: n}}`` summed over the ``key`` counters of heartbeat records."""
    total: dict[str, dict[str, int]] = {}
    for record in records:
        for party, counts in (record.get(key) or {}).items():
            per = total.setdefault(party, {})
            for name, n in counts.items():
                per[name] = per.get(name, 0) + int(n)
    return total


def waiting_of(tasks: Sequence[Task], live: Live, now: datetime) -> list[dict[str, Any] | None]:
    """``waiting`` of each task, in order."""
    return [waiting(task, live, now) for task in tasks]
