"""TaskQueue: every rule of the queue, in one place, written against the ``Store`` interface.

Adding (all or nothing, the singleton rule, under an idempotency key; what an item must be:
``admission``), claiming with a lease, recording outcomes (completion, the recurring re-queue,
failure with attempts and retry delay), handing back, renewing and recovering leases, deleting,
retention (the reads: ``views``). Each change of a claimed task is a write conditional on its lease
token (the fence), so a run whose lease expired cannot overwrite newer state. Knows nothing of
HTTP, processes or a specific store: imports ``stores.base``, ``admission``, ``views``, ``model``,
``registry``, ``errors`` and ``timestamps`` only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .admission import new_task
from .errors import (
    Conflict,
    KeyInProgress,
    KeyMismatch,
    NotFound,
    StoreUnavailable,
    TaskException,
    ValidationError,
)
from .model import (
    OWNER_MARK,
    Leased,
    NewTask,
    Outcome,
    Status,
    Task,
    Write,
    is_valid_id,
    owner_of,
)
from .registry import Registry, running_limits
from .storable import storable_text
from .stores.base import PRUNABLE, KeyedAdd, KeyRecord, KeyTaken, OrderKey, Store
from .timestamps import format_timestamp, system_now
from .views import Views, list_tasks

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_MAX_ATTEMPTS = 6
LIVE = (Status.QUEUED, Status.RUNNING)
DELETABLE = (Status.QUEUED, Status.RUNNING, Status.FAILED, Status.DELETED)
_HAND_BACK_CLEARS = {"lease": None, "lease_expires": None}
# Read once for the write of every outcome: on Python 3.11 each ``Status.X`` read costs about
# 90 ns (the enum metaclass's __getattr__ keeps it off the fast path).
_COMPLETED = Status.COMPLETED
_WHILE_RUNNING = (Status.RUNNING,)
#: How long an idempotency key holds: a repeat within it is answered from the first add; after
#: it the key is new (and retention removes its record).
KEY_TTL = timedelta(hours=24)


def error_info(kind: str, message: str, traceback: str | None = None, *, at: datetime) -> dict:
    """The shape of ``last_error``: type, message, traceback and time (ISO string)."""
    return {
        "type": kind,
        "message": storable_text(message),
        "traceback": None if traceback is None else storable_text(traceback),
        "at": format_timestamp(at),
    }


class TaskQueue:
    """The queue's rules over one store. Shared by the server, the scheduler and the workers.

    ``clock`` returns naive UTC now; tests inject one to step time.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], datetime] = system_now,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.lease = timedelta(seconds=lease_seconds)
        self.clock = clock
        # Written into every lease this queue takes, after an OWNER_MARK: whoever finds the lease
        # later can tell who held it (and, on the same host, whether that process is gone).
        self._owner_suffix = OWNER_MARK + owner if owner else ""
        # The handlers' max_running, read once: the claim passes them to the store as data.
        self.limits = running_limits(registry)  # and 0 for a handler found missing (_pass_over)
        self._missing: frozenset[str] = frozenset()  # handlers of tasks its claims handed back

    # -- adding and reading ------------------------------------------------------------------

    def add(self, items: Iterable[NewTask | Mapping[str, Any]]) -> list[Task]:
        """Validate every item, then insert them all or none; return them as stored, in order.

        Raises ``ValidationError`` (with ``index`` and ``field``) for the first bad item and
        ``Conflict`` when a recurring singleton is already live; nothing is written in either case.
        """
        now = self.clock()
        return self.store.insert_many(
            [new_task(self.registry, index, item, now) for index, item in enumerate(items)]
        )

    def recall(self, key: str, digest: str) -> bytes | None:
        """The answer kept for an add under ``key`` within ``KEY_TTL`` with the same request
        (``digest``), or None when the key is new. Raises ``KeyMismatch`` when the key was used
        with another request and ``KeyInProgress`` while that add has no answer yet."""
        return self._judge(key, self.store.key_record(key), digest)

    def add_once(
        self,
        key: str,
        digest: str,
        items: Iterable[NewTask | Mapping[str, Any]],
        answer: Callable[[list[Task]], bytes],
    ) -> bytes:
        """``add`` under an idempotency key: the tasks and the key's record (with
        ``answer(tasks)``, the bytes a repeat gets) are stored together, or, when the key already
        holds a record, nothing is added and that record decides (``recall``'s answer or error).
        """
        now = self.clock()
        tasks = [new_task(self.registry, index, item, now) for index, item in enumerate(items)]
        kept: list[bytes] = []

        def keep(stored: list[Task]) -> bytes:
            kept.append(answer(stored))
            return kept[-1]

        for _ in range(3):  # a record that expires or is pruned between two looks: look again
            try:
                self.store.insert_many(tasks, key=KeyedAdd(key, digest, now, now - KEY_TTL, keep))
                return kept[-1]
            except KeyTaken as taken:
                replay = self._judge(key, taken.record, digest)
                if replay is not None:
                    return replay
        raise StoreUnavailable(f"the record of idempotency key {key!r} keeps changing; retry")

    def _judge(self, key: str, record: KeyRecord | None, digest: str) -> bytes | None:
        if record is None or record.created < self.clock() - KEY_TTL:
            return None
        if record.digest != digest:
            raise KeyMismatch(
                f"Idempotency-Key {key!r} was used within 24 h with another request body: "
                "send a new key for a new request (a repeat must carry the same body bytes)"
            )
        if record.answer is None:
            raise KeyInProgress(
                f"the first request with Idempotency-Key {key!r} is still in progress; "
                "repeat it once that one is answered"
            )
        return record.answer

    def get(self, task_id: str) -> Task:
        """The task with this id; ``ValidationError`` if malformed, ``NotFound`` if unknown."""
        task = self.store.get(_checked_id(task_id))
        if task is None:
            raise NotFound(f"no task with id {task_id}")
        return task

    # The reads live in ``views``; these delegates keep the scheduler's idle check (and any
    # caller written against the queue) as it was.

    def list(
        self,
        *,
        status: Status | str | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        """``views.list_tasks``: a page of tasks in queue order."""
        return list_tasks(self.store, status=status, party=party, limit=limit, after=after)

    def stats(self) -> dict[str, Any]:
        """``Views.stats``: counts, due tasks, the oldest one's age, ``no_handler``, ``pruned``."""
        return Views(self.store, self.registry, clock=self.clock).stats()

    def next_run_at(self) -> datetime | None:
        """When the earliest queued task this process can run becomes due (None when none is
        queued): the tasks of handlers its claims found missing are left out."""
        if self._missing:
            return self.store.next_run_at(self._missing)
        return self.store.next_run_at()

    def delete(self, task_id: str) -> Task:
        """Mark a task ``deleted`` (idempotent). A running task finishes its run but stays deleted.

        Raises ``Conflict`` for a completed task and ``NotFound`` for an unknown id.
        """
        task = self.store.update(
            Write(
                _checked_id(task_id),
                {"status": Status.DELETED, "singleton": None},
                statuses=DELETABLE,
            )
        )
        if task is not None:
            return task
        current = self.get(task_id)
        raise Conflict(f"task {task_id} is {current.status}: a completed task cannot be deleted")

    def reschedule(self, task_id: str, timestamp: datetime, *, schedule: str | None) -> Task | None:
        """Move a queued task to ``timestamp`` and mark it with ``schedule`` (a declared schedule
        changed in code); None, and nothing written, unless it is still queued."""
        fields = {"timestamp": timestamp, "run_at": timestamp, "schedule": schedule}
        return self.store.update(Write(task_id, fields, statuses=(Status.QUEUED,)))

    def discard(self, task_id: str) -> Task | None:
        """Delete a task only while it is queued (a declared schedule removed from code); None,
        and nothing written, once it runs or has ended."""
        return self.store.update(
            Write(task_id, {"status": Status.DELETED, "singleton": None}, statuses=(Status.QUEUED,))
        )

    # -- claiming and recording --------------------------------------------------------------

    def claim(self, limit: int, *, now: datetime | None = None, ahead: float = 0.0) -> list[Task]:
        """Lease up to ``limit`` due tasks in queue order; each costs one attempt. A handler at
        its ``max_running`` is passed over (the store enforces it in the claim, atomically).

        ``ahead`` (seconds) also takes tasks that become due that soon: the caller must then not
        start one before its time (the scheduler's workers wait for it), which lets a task
        scheduled ahead start on the dot instead of one claim-and-dispatch after it.
        """
        now = now or self.clock()
        due_by = now + timedelta(seconds=ahead) if ahead else now
        if self.limits:
            tasks = self.store.claim(limit, due_by, now + self.lease, self._token(), self.limits)
        else:
            tasks = self.store.claim(limit, due_by, now + self.lease, self._token())
        registry = self.registry
        for task in tasks:
            if task.party not in registry:
                return self._pass_over(tasks)
        return tasks

    def _pass_over(self, tasks: list[Task]) -> list[Task]:
        """Hand back the claimed tasks whose handler this process lacks, and leave that handler
        out of its later claims (a cap of 0): they wait, queued and uncharged, for a scheduler
        that has it (``waiting`` says ``no_handler`` while none does). Running them would fail
        them for good: a rolling deploy, or schedulers that share a store with other handlers."""
        lacking = [task for task in tasks if task.party not in self.registry]
        self.release(lacking)
        new = {task.party for task in lacking} - self._missing
        for party in sorted(new):
            logger.warning(
                "tasks of handler %r are left queued: it is not registered in this process "
                "(registered: %s); a scheduler that has it will run them",
                party, ", ".join(self.registry.names) or "none",
            )  # fmt: skip
        self._missing |= new
        self.limits = {**self.limits, **dict.fromkeys(new, 0)}
        return [task for task in tasks if task.party in self.registry]

    def claim_now(self, task_id: str) -> Task:
        """Lease one task for an immediate run, due or not (the force-run of ``POST /task/<id>``).

        Raises ``Conflict`` unless the task is queued (completed, deleted, failed and running tasks
        are refused) or when its handler is not registered here (a server started without the
        module, as in a rolling deploy: running it would fail it for good), ``NotFound`` for an
        unknown id.
        """
        task_id = _checked_id(task_id)
        party = self.get(task_id).party
        if party not in self.registry:
            raise Conflict(
                f"task {task_id} is a {party!r} task and no handler named {party!r} is "
                "registered in this server: start it with --tasks (PARTY_TASKS) naming the "
                "handler's module, or let a scheduler that has it run the task"
            )
        task = self.store.claim_id(task_id, self.clock() + self.lease, self._token())
        if task is not None:
            return task
        current = self.get(task_id)
        reason = {
            Status.COMPLETED: "a completed task cannot be run again",
            Status.DELETED: "a deleted task cannot be run",
            Status.FAILED: f"it failed {current.attempts} attempts and will not run again",
            Status.RUNNING: "it is running now",
        }.get(current.status, "it is not queued")
        raise Conflict(f"task {task_id} is {current.status}: {reason}")

    def record(self, outcomes: Sequence[Outcome]) -> list[Status | None]:
        """Write the outcomes of finished runs, fenced by each run's lease token.

        Returns each task's new status, or None where the lease was lost (the task was recovered
        and belongs to a newer run, so this outcome is discarded). A task deleted during its run
        stays deleted; its result or error is still kept. Follow-up tasks of a successful run are
        added once its completion is written.
        """
        now = self.clock()
        writes = [self._outcome_write(outcome, now) for outcome in outcomes]
        matched = self.store.write_many(writes)
        statuses: list[Status | None] = []
        for outcome, write, ok in zip(outcomes, writes, matched, strict=True):
            if ok:
                statuses.append(write.fields["status"])
                if outcome.ok and outcome.follow_ups:
                    self._add_follow_ups(outcome)
            else:
                statuses.append(self._record_after_delete(outcome, write))
        return statuses

    def _outcome_write(self, outcome: Outcome, now: datetime) -> Write:
        task = outcome.task
        fields: dict[str, Any] = {
            "started_on": outcome.started_on,
            "completed_on": outcome.finished_on,
            **_HAND_BACK_CLEARS,
        }
        if outcome.ok:
            fields["result"] = outcome.result
            if outcome.next_run is not None:
                fields.update(
                    status=Status.QUEUED,
                    timestamp=outcome.next_run,
                    run_at=outcome.next_run,
                    attempts=0,
                    last_run_on=outcome.started_on,
                )
            else:
                if task.is_recurring:
                    logger.warning(
                        "recurring task %s (%s) scheduled no next run in on_complete; "
                        "it is completed and will not run again",
                        task.id,
                        task.party,
                    )
                fields["status"] = _COMPLETED
                fields.update(_free_singleton(task))
        else:
            fields.update(self._failure_fields(task, outcome.error, outcome.permanent, now))
        return Write(task.id, fields, lease=task.lease, statuses=_WHILE_RUNNING)

    def _failure_fields(
        self, task: Task, error: dict[str, Any] | None, permanent: bool, now: datetime
    ) -> dict[str, Any]:
        handler = self.registry.get(task.party)
        max_attempts = handler.max_attempts if handler else DEFAULT_MAX_ATTEMPTS
        fields: dict[str, Any] = {"last_error": error}
        if permanent or task.attempts >= max_attempts:
            fields["status"] = Status.FAILED
            fields.update(_free_singleton(task))
        else:
            delay = handler.retry_delay_for(task.attempts) if handler else 0.0
            fields.update(
                status=Status.QUEUED,
                run_at=max(task.timestamp, now + timedelta(seconds=delay)),
                completed_on=None,
            )
        return fields

    def _record_after_delete(self, outcome: Outcome, write: Write) -> Status | None:
        kept = {
            k: write.fields[k]
            for k in ("result", "last_error", "started_on", "completed_on")
            if k in write.fields
        }
        task = self.store.update(
            Write(
                outcome.task.id,
                {**kept, **_HAND_BACK_CLEARS},
                lease=outcome.task.lease,
                statuses=(Status.DELETED,),
            )
        )
        if task is not None:
            return Status.DELETED
        logger.warning(
            "outcome of task %s (%s) discarded: its lease %s was lost (expired and recovered)",
            outcome.task.id,
            outcome.task.party,
            outcome.task.lease,
        )
        return None

    def _add_follow_ups(self, outcome: Outcome) -> None:
        try:
            self.add(outcome.follow_ups)
        except TaskException as exc:
            logger.warning(
                "follow-up tasks of task %s (%s) were not added: %s",
                outcome.task.id,
                outcome.task.party,
                exc,
            )

    def fail(self, task: Task, error: dict[str, Any], *, permanent: bool = False) -> Status | None:
        """Record a failed run of a claimed task (an exception, a timeout, a dead worker)."""
        now = self.clock()
        outcome = Outcome(task, ok=False, started_on=task.started_on or now, finished_on=now,
                          error=error, permanent=permanent)  # fmt: skip
        return self.record([outcome])[0]

    def release(self, tasks: Sequence[Leased]) -> list[bool]:
        """Hand claimed tasks back to the queue without spending their attempt (shutdown)."""
        writes = [
            Write(
                t.id,
                {"status": Status.QUEUED, "attempts": max(0, t.attempts - 1), **_HAND_BACK_CLEARS},
                lease=t.lease,
                statuses=(Status.RUNNING,),
            )
            for t in tasks
        ]
        return self.store.write_many(writes)

    def renew(self, tasks: Sequence[Leased], *, now: datetime | None = None) -> list[bool]:
        """Extend the leases of running tasks; False where the lease was already lost."""
        expires = (now or self.clock()) + self.lease
        writes = [Write(t.id, {"lease_expires": expires}, lease=t.lease) for t in tasks]
        return self.store.write_many(writes)

    def recover_expired(self, *, now: datetime | None = None, limit: int = 100) -> list[Task]:
        """Fail the runs whose lease expired (a crashed scheduler's); each keeps its attempt spent.
        Returns the tasks recovered, each with the status the recovery left it in.

        Safe to call from any number of processes: the fence lets one recoverer win per task.
        """
        now = now or self.clock()
        recovered: list[Task] = []
        for task in self.store.expired(now, limit):
            expired_at = format_timestamp(task.lease_expires)
            why = (
                f"lease expired at {expired_at}: the process running it stopped renewing "
                "(crashed or was killed)"
            )
            if self._recover(task, why, now):
                recovered.append(task)
        return recovered

    def recover_orphans(
        self, is_gone: Callable[[str], bool], *, now: datetime | None = None, limit: int = 1000
    ) -> list[Task]:
        """Fail at once the runs whose lease owner ``is_gone`` (a process provably dead), without
        waiting for their lease to expire; each keeps its attempt spent, as after an expiry.

        ``is_gone`` gets the owner a lease was taken with (see ``owner=``); leases without one are
        left to expire. Fenced like every recovery: safe from any number of processes.
        """
        now = now or self.clock()
        recovered: list[Task] = []
        for task in self.store.query(status=Status.RUNNING, party=None, limit=limit, after=None):
            owner = owner_of(task.lease)
            if owner is None or not is_gone(owner):
                continue
            why = "the process holding its lease is gone (crashed or was killed)"
            if self._recover(task, why, now):
                recovered.append(task)
        return recovered

    def _recover(self, task: Task, why: str, now: datetime) -> bool:
        error = error_info("LeaseExpired", why, at=now)
        outcome = Outcome(task, ok=False, started_on=task.started_on or now,
                          finished_on=now, error=error)  # fmt: skip
        write = self._outcome_write(outcome, now)
        if not self.store.write_many([write])[0]:
            return False
        task.status = write.fields["status"]  # what the recovery left it: queued again, or failed
        logger.warning(
            "recovered task %s (%s) after attempt %d: %s", task.id, task.party, task.attempts, why
        )
        return True

    def _token(self) -> str:
        return secrets.token_hex(12) + self._owner_suffix

    # -- retention ---------------------------------------------------------------------------

    def prune(
        self,
        keep_completed: float,
        keep_failed: float,
        *,
        now: datetime | None = None,
        limit: int = 500,
    ) -> int:
        """One short write of retention: remove up to ``limit`` completed and deleted tasks that
        ended over ``keep_completed`` seconds ago, else failed ones over ``keep_failed`` seconds
        ago, else idempotency keys past ``KEY_TTL`` (0 keeps that kind for ever). Queued and
        running tasks, recurring ones included, are never removed. Returns what it removed
        (0: nothing is left to remove)."""
        now = now or self.clock()
        kinds: list[tuple[tuple[Status, ...], float]] = [
            ((Status.COMPLETED, Status.DELETED), keep_completed),
            ((Status.FAILED,), keep_failed),
        ]
        for statuses, keep in kinds:
            if keep > 0:
                assert all(status in PRUNABLE for status in statuses)
                removed = self.store.prune(statuses, now - timedelta(seconds=keep), limit)
                if removed:
                    return removed
        return self.store.prune_keys(now - KEY_TTL, limit)


def _free_singleton(task: Task) -> dict[str, Any]:
    # Writing the column only when it is set spares the store an index update on every task.
    return {"singleton": None} if task.singleton is not None else {}


def _checked_id(task_id: str) -> str:
    # The words of the HTTP answer (``wire.check_id``): the in-process handle raises the same.
    if not is_valid_id(task_id):
        long = isinstance(task_id, str) and len(task_id) > 40
        shown = task_id[:40] + "..." if long else task_id
        raise ValidationError(
            f"malformed task id {shown!r}: expected 24 lowercase hex characters, "
            "as in the '_id' of a task",
            field="id",
        )
    return task_id
