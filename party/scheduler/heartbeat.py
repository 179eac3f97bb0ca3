"""Heartbeat: what a live scheduler tells the store about itself every few seconds.

The record (``Store.beat``) holds its id, host, pid, start time, workers, concurrency, handlers,
what each worker runs and since when, and its run counters by handler and outcome. The server
reads the live ones (beat within ``DEAD_AFTER``) for ``GET /schedulers``, the ``no_handler``
reason and the metrics, which sum the counters of every record, live and past: a counter only
ever grows, and a restarted scheduler starts a new record instead of resetting an old one.
Counting rules: a finished run counts once, as ``completed``, ``retried`` (failed and queued
again) or ``failed`` (for good); a run lost to a crash counts when its lease is recovered; a
hand-back counts nothing. Imports ``model``, ``timestamps`` and the store's contract only.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..model import Status, Task
from ..stores.base import Store
from ..timestamps import format_timestamp

#: Seconds between two beats of a scheduler.
BEAT_EVERY = 2.0
#: A scheduler is dead after three missed beats.
DEAD_AFTER = 3 * BEAT_EVERY
#: Records of schedulers silent for this long are removed (their counters are past history the
#: metrics keep only while the record lives; a week covers any scrape gap).
FORGET_AFTER = timedelta(days=7)

Outcome = str  # "completed", "retried" or "failed"


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
        self.running: list[dict[str, Any]] = []
        #: The schedules its handlers declare, by handler (``scheduler.schedules`` fills it).
        self.schedules: dict[str, dict[str, Any]] = {}
        self.stopped: datetime | None = None
        self._next: datetime | None = None

    def count(self, party: str, outcome: Outcome | None) -> None:
        """Count one finished run of ``party``."""
        if outcome is not None:
            per = self.counters.setdefault(party, {})
            per[outcome] = per.get(outcome, 0) + 1

    def count_recovered(self, tasks: Iterable[Task]) -> None:
        """Count runs lost to a crash, as their recovery left them (queued again or failed)."""
        for task in tasks:
            self.count(task.party, "retried" if task.status == Status.QUEUED else "failed")

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
