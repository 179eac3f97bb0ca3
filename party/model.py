"""The task record and its statuses: the one shape every layer passes around.

Imports only the standard library and ``timestamps``; ids have the shape of a BSON ObjectId, which
the Mongo store converts them to, without importing ``bson``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from .timestamps import from_micros, to_micros

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")


class Status(StrEnum):
    """Where a task is in its life. ``queued`` and ``running`` are the only live statuses.

    A ``StrEnum`` (rq's ``JobStatus`` shape on Python 3.11): members compare equal to their
    lowercase values, so stores and the wire use the plain strings.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


ALL_STATUSES = tuple(s.value for s in Status)


# The parts of an ObjectId after its 4-byte time: 5 random bytes per process and a 3-byte counter
# from a random start. Drawn again in a forked child, which must not repeat its parent's ids.
_id_process = ""
_id_counter: Iterator[int] = iter(())


def _seed_ids() -> None:
    global _id_process, _id_counter
    _id_process = os.urandom(5).hex()
    _id_counter = itertools.count(int.from_bytes(os.urandom(3)))


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)


def new_id() -> str:
    """A fresh 24-hex id (a BSON ObjectId, so ids sort roughly by creation on both stores).

    Built as ``bson.ObjectId()`` builds one (seconds, process, counter), at a third of its cost:
    a batch of 1,000 tasks draws 1,000 ids.
    """
    return f"{int(time.time()):08x}{_id_process}{next(_id_counter) & 0xFFFFFF:06x}"


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a 24-hex lowercase task id."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: equal data give equal text whatever the key order."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def singleton_key(party: str, data: dict[str, Any]) -> str:
    """The key the store's unique index holds for a live recurring task of (party, data).

    A hash keeps the indexed value short whatever the size of ``data``.
    """
    import hashlib  # only here: its OpenSSL backend costs about 4 ms to import

    digest = hashlib.sha256(canonical_json([party, data]).encode()).hexdigest()
    return f"{party}:{digest}"


@dataclass
class Task:
    """One task as stored.

    ``run_at`` is when the task may next be claimed: its ``timestamp``, or later while a retry
    delay runs (retries never change ``timestamp``, which keeps the task's place in the queue
    order). ``lease`` is the token of the current claim; every write of a run is conditional on
    it. ``singleton`` is set only while a recurring task is queued or running, and is unique.
    """

    id: str
    party: str
    data: dict[str, Any]
    timestamp: datetime
    created: datetime
    run_at: datetime
    attempts: int = 0
    status: Status = Status.QUEUED
    is_recurring: bool = False
    last_run_on: datetime | None = None
    started_on: datetime | None = None
    completed_on: datetime | None = None
    result: Any = None
    last_error: dict[str, Any] | None = None
    lease: str | None = None
    lease_expires: datetime | None = None
    singleton: str | None = None

    @property
    def order_key(self) -> tuple[datetime, int, datetime, str]:
        """The queue order: timestamp, then attempts, then created, then id."""
        return (self.timestamp, self.attempts, self.created, self.id)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Tasks cross a pipe to a worker on every run: a flat tuple with times as integers and
        # the status as its string pickles several times faster than the dataclass default.
        return (
            task_from_micros,
            (
                self.id, self.party, self.data, _micros(self.timestamp), _micros(self.created),
                _micros(self.run_at), self.attempts, str(self.status), self.is_recurring,
                _micros(self.last_run_on), _micros(self.started_on), _micros(self.completed_on),
                self.result, self.last_error, self.lease, _micros(self.lease_expires),
                self.singleton,
            ),
        )  # fmt: skip


_STATUSES = {status.value: status for status in Status}


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def task_from_micros(
    id_: str, party: str, data: dict[str, Any], timestamp: int, created: int, run_at: int,
    attempts: int, status: str, is_recurring: bool, last_run_on: int | None,
    started_on: int | None, completed_on: int | None, result: Any,
    last_error: dict[str, Any] | None, lease: str | None, lease_expires: int | None,
    singleton: str | None,
) -> Task:  # fmt: skip
    """A Task from its fields with times as integer microseconds (UTC) and the status as its
    string: the shape of a pickled task and of a SQLite row."""
    # A fresh task's three times are one instant: convert it once.
    ts = from_micros(timestamp)
    return Task(
        id_, party, data, ts,
        ts if created == timestamp else from_micros(created),
        ts if run_at == timestamp else from_micros(run_at),
        attempts, _STATUSES[status], is_recurring,
        None if last_run_on is None else from_micros(last_run_on),
        None if started_on is None else from_micros(started_on),
        None if completed_on is None else from_micros(completed_on),
        result, last_error, lease,
        None if lease_expires is None else from_micros(lease_expires),
        singleton,
    )  # fmt: skip


class Leased(Protocol):
    """A claimed task as far as its fenced writes need it: a ``Task``, or what a worker that
    claimed it told its parent (``worker.Claimed``)."""

    @property
    def id(self) -> str: ...

    @property
    def lease(self) -> str | None: ...

    @property
    def attempts(self) -> int: ...


@dataclass
class Write:
    """A conditional single-task update: set ``fields`` where the id matches, and where the lease
    token and status match when given. A field set to None is cleared."""

    task_id: str
    fields: dict[str, Any]
    lease: str | None = None
    statuses: tuple[Status, ...] | None = None


@dataclass
class NewTask:
    """A task to add: the input of ``TaskQueue.add`` and of ``tasks.add`` in on_complete."""

    party: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None


@dataclass
class Outcome:
    """What one run of a claimed task produced; the runner builds it, the queue records it.

    ``error`` is ``{"type", "message", "traceback", "at"}`` when the run failed. ``next_run`` is set
    when a recurring task's on_complete scheduled one; ``follow_ups`` holds its ``tasks.add`` calls.
    ``permanent`` marks a failure no retry can mend (an unknown handler).
    """

    task: Task
    ok: bool
    started_on: datetime
    finished_on: datetime
    result: Any = None
    error: dict[str, Any] | None = None
    next_run: datetime | None = None
    follow_ups: list[NewTask] = field(default_factory=list)
    permanent: bool = False
