"""Heartbeat: what a live scheduler tells the store about itself every few seconds.

The record (``Store.beat``) holds its id, host, pid, start time, workers, concurrency, handlers,
what each worker runs and since when, and its run counters by handler and outcome. The server
reads the live ones (beat within ``DEAD_AFTER``) for ``GET /schedulers``, the ``no_handler``
reason and the metrics, which sum the counters of every record, live and past: a counter only
ever grows, and a restarted scheduler starts a new record instead of resetting an old one.
Counting rules: a finished run counts once, as ``completed``, ``retried`` (failed and queued
again) or ``failed`` (for good); a run lost to a crash counts when its lease is recovered; a
hand-back counts nothing. Beside them: runs lost to a crash (``recovered``), workers replaced
(``worker_restarts``), and the histograms of run durations and start lateness as counts per bucket
of ``metrics``' buckets. Imports ``model``, ``timestamps``, ``views``, ``metrics`` (its buckets,
not prometheus_client) and the store's contract only.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..metrics import HISTOGRAMS, observe, observe_all
from ..model import Status, Task
from ..stores.base import Store
from ..timestamps import format_timestamp
from ..views import BEAT_EVERY, DEAD_AFTER

_RUN_BUCKETS = HISTOGRAMS["run_seconds"][1]
_LATENESS_BUCKETS = HISTOGRAMS["lateness"][1]

__all__ = ["BEAT_EVERY", "DEAD_AFTER", "FORGET_AFTER", "Heartbeat", "Run", "outcome_of"]
#: Records of schedulers silent for this long are removed (their counters are past history the
#: metrics keep only while the record lives; a week covers any scrape gap).
FORGET_AFTER = timedelta(days=7)

Outcome = str  # "completed", "retried" or "failed"


class _Parted(Protocol):
    @property
    def party(self) -> str: ...


class Run(Protocol):
    """A finished run as ``Heartbeat.count_finished`` reads it (a pool's ``Finished``)."""

    @property
    def task(self) -> _Parted: ...

    @property
    def status(self) -> Status | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def duration(self) -> float: ...

    @property
    def late(self) -> float | None: ...

    @property
    def released(self) -> bool: ...


def outcome_of(status: Status | None, error: str | None) -> Outcome | None:
    """How a finished run counts: by the task's status after it and whether it failed (None: it
    counts nothing, a hand-back or an outcome discarded with its lost lease)."""
    if status is None:
        return None
    if error is None:
        return "completed"
    return "retried" if status == Status.QUEUED else "failed"


class Heartbeat:
    """One scheduler's record, kept up to date and written to the store when a beat is due."""

    def __init__(
        self,
        store: Store,
        *,
        workers: int,
        handlers: Sequence[str],
        concurrency: int = 1,
        started: datetime,
    ) -> None:
        self.store = store
        self.id = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = started
        self.workers = workers
        self.concurrency = concurrency
        self.handlers = sorted(handlers)
        self.counters: dict[str, dict[str, int]] = {}
        self.recovered: dict[str, int] = {}
        #: Histograms by record key (``metrics.HISTOGRAMS``), then by handler.
        self.histograms: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in HISTOGRAMS}
        self._runs, self._lateness = self.histograms["run_seconds"], self.histograms["lateness"]
        self.worker_restarts = 0
        self._pids: dict[Any, Any] = {}
        self.running: list[dict[str, Any]] = []
        #: The schedules its handlers declare, by handler (``scheduler.schedules`` fills it).
        self.schedules: dict[str, dict[str, Any]] = {}
        self.stopped: datetime | None = None
        self._next: datetime | None = None

    def count(
        self,
        party: str,
        outcome: Outcome | None,
        duration: float | None = None,
        late: float | None = None,
    ) -> None:
        """Count one finished run of ``party``, its ``duration`` and how ``late`` it started
        (seconds; None when unknown). A run that counts nothing is not observed either."""
        if outcome is None:
            return
        per = self.counters.setdefault(party, {})
        per[outcome] = per.get(outcome, 0) + 1
        # Written out for the two histograms: this runs once per finished run in the scheduler,
        # which shares the CPUs with its workers.
        if duration is not None:
            observe(self._runs.setdefault(party, {}), max(duration, 0.0), _RUN_BUCKETS)
        if late is not None:
            observe(self._lateness.setdefault(party, {}), max(late, 0.0), _LATENESS_BUCKETS)

    def count_finished(self, runs: Iterable[Run]) -> None:
        """Count a pool's finished runs as ``count`` does each (a hand-back counts nothing),
        party by party: this runs in the scheduler for every run, on the CPUs its workers use."""
        by_party: dict[str, list[Run]] = {}
        for run in runs:
            if not run.released and run.status is not None:
                party = run.task.party
                batch = by_party.get(party)
                if batch is None:
                    by_party[party] = [run]
                else:
                    batch.append(run)
        for party, batch in by_party.items():
            self._count_batch(party, batch)

    def _count_batch(self, party: str, runs: list[Run]) -> None:
        outcomes: dict[str, int] = {}  # in the order first seen, as ``count`` adds them
        durations: list[float] = []
        lateness: list[float] = []
        for run in runs:
            outcome = outcome_of(run.status, run.error)  # never None: count_finished kept those
            outcomes[outcome] = outcomes.get(outcome, 0) + 1  # type: ignore[index]
            durations.append(max(run.duration, 0.0))
            if run.late is not None:
                lateness.append(max(run.late, 0.0))
        per = self.counters.setdefault(party, {})
        for outcome, n in outcomes.items():
            per[outcome] = per.get(outcome, 0) + n
        observe_all(self._runs.setdefault(party, {}), durations, _RUN_BUCKETS)
        if lateness:
            observe_all(self._lateness.setdefault(party, {}), lateness, _LATENESS_BUCKETS)

    def count_recovered(self, tasks: Iterable[Task]) -> None:
        """Count runs lost to a crash, as their recovery left them (queued again or failed)."""
        for task in tasks:
            self.count(task.party, "retried" if task.status == Status.QUEUED else "failed")
            self.recovered[task.party] = self.recovered.get(task.party, 0) + 1

    def watch_workers(self, activity: Iterable[dict[str, Any]]) -> None:
        """Note the pid of each worker slot (``WorkerPool.activity``): a slot whose pid changed
        holds a replacement, counted in ``worker_restarts``."""
        for worker in activity:
            index, pid = worker.get("worker"), worker.get("pid")
            known = self._pids.get(index)
            if known is not None and known != pid:
                self.worker_restarts += 1
            self._pids[index] = pid

    def record(self, now: datetime) -> dict[str, Any]:
        """The record as the store keeps it (JSON: times as ISO strings)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started": format_timestamp(self.started),
            "workers": self.workers,
            "concurrency": self.concurrency,
            "handlers": self.handlers,
            "running": self.running,
            "schedules": self.schedules,
            "runs": self.counters,
            "recovered": self.recovered,
            "worker_restarts": self.worker_restarts,
            **self.histograms,
            "beat_every": BEAT_EVERY,
            "stopped": None if self.stopped is None else format_timestamp(self.stopped),
        }

    def due(self, now: datetime) -> bool:
        """Whether a beat is due at ``now``."""
        return self._next is None or now >= self._next

    def beat(self, now: datetime) -> None:
        """Write the record now (the store may raise ``StoreUnavailable``)."""
        self.store.beat(self.record(now), now)
        self._next = now + timedelta(seconds=BEAT_EVERY)

    @property
    def next_beat(self) -> datetime | None:
        """When the next beat is due."""
        return self._next
