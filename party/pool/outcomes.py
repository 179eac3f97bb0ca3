"""What became of runs: the ``Finished`` a pool returns, the one log line that ends a run, and the
pool's own writes (``Ledger``) for runs whose worker cannot write them: a run that died with its
worker is failed (one attempt, fenced by its lease), what it held unstarted is handed back.
Imports ``queue``, ``stores``, ``registry``, ``model``, ``timestamps`` and the package's
``messages``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from ..model import Outcome, Status, Task
from ..queue import TaskQueue, error_info
from ..registry import Registry
from ..stores import open_store
from ..timestamps import system_now
from .messages import RELEASED, Claimed, Wire

logger = logging.getLogger("party.pool.supervisor")
_runs = logging.getLogger("party.pool.worker")


@dataclass(slots=True)
class Finished:
    """What became of a task handed to or claimed by the pool.

    ``status`` is the task's status after the run (None when its outcome was discarded because
    the lease was lost); ``released`` is True when it was handed back unstarted or at shutdown;
    ``error`` is the error type of a failed run; ``late`` how long after it became due the run
    started (when the worker reported it).
    """

    task: Task | Claimed
    status: Status | None
    duration: float = 0.0
    error: str | None = None
    released: bool = False
    seq: int = 0
    late: float | None = None  # seconds from due to started, for a run that started


def finished_from(task: Task | Claimed, report: Wire) -> Finished:
    """The ``Finished`` of a worker's report on ``task``, in its wire form (``messages.report``:
    read as it came, the scheduler builds no ``Report`` for each run)."""
    _, seq, status, duration, error, late = report
    if status == RELEASED:
        return Finished(task, Status.QUEUED, released=True, seq=seq)
    if status is not None:
        status = _STATUSES[status]
    return Finished(task, status, duration, error, False, seq, late)


_STATUSES = {status.value: status for status in Status}  # Status(value) costs ten times more


def ends_logged() -> bool:
    """Whether ``log_end`` writes a line for a run that went well (its logger takes INFO): a
    worker asks once per batch of outcomes and calls ``log_end`` only for the runs it logs."""
    return _runs.isEnabledFor(logging.INFO)


def log_end(outcome: Outcome, status: Status | str | None, duration: float) -> None:
    """The one line that ends a run (id, handler, attempt, duration, outcome)."""
    if outcome.ok and status is not None and not _runs.isEnabledFor(logging.INFO):
        return  # the common case under --log-level WARNING: build no line at all
    task = outcome.task
    head = f"task {task.id} ({task.party}) attempt {task.attempts}"
    if status is None:
        _runs.warning("%s finished in %.3fs; outcome discarded: lease lost", head, duration)
    elif outcome.ok:
        if status == Status.QUEUED:
            _runs.info("%s completed in %.3fs, next run %s", head, duration, outcome.next_run)
        else:
            _runs.info("%s %s in %.3fs", head, status, duration)
    else:
        error = outcome.error or {}
        then = {Status.QUEUED: "will retry", Status.FAILED: "failed for good"}.get(
            Status(status), f"task is {status}"
        )
        _runs.warning(
            "%s failed in %.3fs (%s: %s); %s\n%s",
            head,
            duration,
            error.get("type"),
            error.get("message"),
            then,
            (error.get("traceback") or "").rstrip(),
        )


class Ledger:
    """The pool's own store writes, on ``queue`` (opened on ``store_url`` when first needed)."""

    def __init__(
        self,
        store_url: str,
        registry: Registry,
        lease_seconds: float,
        name: str,
        queue: TaskQueue | None = None,
    ) -> None:
        self.store_url = store_url
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.name = name
        self.queue = queue

    def fail_run(
        self,
        running: Task | Claimed,
        seq: int,
        started: float,
        name: str,
        pid: int,
        reason: str,
        timed_out: float | None,
    ) -> Finished:
        duration = time.monotonic() - started
        if timed_out is not None:
            kind, message = "Timeout", f"timed out after {timed_out:g} s"
        else:
            kind = "WorkerDied"
            message = f"the worker process running it ({name}, pid {pid}) {reason}"
        status = None
        failed = self.full_task(running)
        if failed is not None:
            failed.started_on = system_now() - timedelta(seconds=duration)
            error = error_info(kind, message, at=system_now())
            status = self.call("fail", failed, error)
        if failed is not None or timed_out is not None:
            logger.warning(
                "task %s (%s) attempt %d failed after %.3fs: %s; %s",
                running.id, running.party, running.attempts, duration, message,
                "will retry" if status == Status.QUEUED else f"task is {status}",
            )  # fmt: skip
        return Finished(running, status, duration, kind, seq=seq)

    def full_task(self, item: Task | Claimed) -> Task | None:
        """The task a run was of, as the store has it under this run's lease (None when it is
        gone or its lease is no longer this run's: the worker recorded it before dying)."""
        task = self.call("get", item.id)
        if not isinstance(task, Task) or task.lease != item.lease:
            return None
        return task

    def hand_back(self, tasks: dict[int, Task | Claimed]) -> list[Finished]:
        released = self.call("release", list(tasks.values()))
        if not isinstance(released, list):
            released = [False] * len(tasks)
        return [
            Finished(task, Status.QUEUED if ok else None, released=True, seq=seq)
            for (seq, task), ok in zip(tasks.items(), released, strict=True)
        ]

    def call(self, method: str, *args: object) -> object:
        # The task's lease stays in the store if this fails, so lease recovery takes it over.
        try:
            if self.queue is None:
                self.queue = TaskQueue(
                    open_store(self.store_url), self.registry, lease_seconds=self.lease_seconds
                )
            return getattr(self.queue, method)(*args)
        except Exception as exc:
            logger.error(
                "%s pool: %s failed, lease recovery will take over: %s", self.name, method, exc
            )
            return None
