"""The worker process: the loop a pool child runs after the fork, until its parent is gone.

A worker opens its own store (a connection inherited across ``fork`` is never safe to use), ignores
SIGINT and SIGTERM (the scheduler decides when it stops), keeps the leases of what it holds alive
from its own keeper thread (``leases``), and runs tasks in order through ``runner.run_task``, none
before its ``not_before`` (epoch seconds, for a task claimed a few milliseconds ahead of its time).
Where the tasks come from depends on the pool:

- the scheduler's workers claim for themselves (``ClaimPolicy``, ``claiming``): each claims a
  batch in queue order when it runs low, tells its parent what it holds (``Claimed``), and sleeps
  while nothing is due until the next task's time, a wake-up from the store or the poll interval;
- the server's force-run workers run what their parent pushes down the pipe (``Push``).

Outcomes are recorded by the worker through its own ``TaskQueue``, fenced by each run's lease,
in batches that close when they are half of what the worker holds or ``FLUSH_AFTER`` after their
first run ended (the commit window), then reported to the parent (``Report``). Before each run the
worker writes its sequence number and start into the shared ``Slot``. This is the worker that runs
one run at a time (``--concurrency 1``); ``concurrent.ConcurrentWorker`` runs several. A worker
calls the registry's start hooks before its first run and its stop hooks when it stops normally.
Imports ``runner``, ``queue``, ``stores``, ``registry``, ``channel``, ``model``, ``errors``,
``timestamps`` and the package's ``slot``, ``messages``, ``leases`` and ``claiming``; never the
scheduler or the server.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta

from ..channel import Channel, wait_readable
from ..errors import StoreUnavailable
from ..model import Outcome, Status, Task
from ..queue import TaskQueue
from ..registry import Registry
from ..runner import run_task
from ..stores import open_store
from ..stores.base import Store
from ..stores.wakeup import Listener
from ..timestamps import system_now, to_micros
from . import messages, owner
from .claiming import CLAIM_AHEAD, WAKE_AHEAD, ClaimPolicy, Prefetch
from .leases import Leases
from .messages import RELEASED, Push, Wire
from .outcomes import ends_logged, log_end
from .slot import Slot

logger = logging.getLogger(__name__)

#: Longest time a finished outcome waits in the worker before it is written to the store.
FLUSH_AFTER = 0.005
#: The last part of a sleep taken with a precise timer instead of poll()'s whole milliseconds.
TIMER_SLACK = 0.002
#: Longest pause before trying again a store that stopped answering (seconds).
MAX_BACKOFF = 5.0
_Pending = tuple[int, Task, "float | None"]


class Worker:
    """The state of one worker process; ``serve`` is its whole life."""

    def __init__(
        self,
        conn: Channel,
        slot: Slot,
        store_url: str,
        registry: Registry,
        *,
        lease_seconds: float,
        name: str,
        claim: ClaimPolicy | None = None,
        concurrency: int = 1,
    ) -> None:
        self.conn = conn
        self.concurrency = concurrency
        self.slot = slot
        self.registry = registry
        self.name = name
        self.parent = os.getppid()
        self.lease_seconds = lease_seconds
        # This process owns the leases it takes: a scheduler on this host can tell when it is gone.
        store = open_store(store_url)
        store.relax_commits()
        self.queue = TaskQueue(store, registry, lease_seconds=lease_seconds, owner=owner.identity())
        self.leases = Leases(
            lambda: TaskQueue(_relaxed(store_url), registry, lease_seconds=lease_seconds),
            registry,
            lease_seconds,
            name=name,
            capacity=concurrency,
            parent=self.parent,
        )
        self.pending: deque[_Pending] = deque()
        self.done: list[tuple[int, Outcome, float]] = []
        self.notes: list[Wire] = []  # reports of runs that never started
        self.first_done = 0.0
        self._poller = select.poll()  # one poller for the life of the worker, not one per task
        self._poller.register(conn.fileno(), select.POLLIN)
        self.claim = claim
        self.prefetch = Prefetch(claim, concurrency) if claim is not None else None
        self._seq = 0
        self._backoff = 0.0
        self._retry_at = 0.0  # a worker that must not sleep retries a claim only after this
        self.last_got = 0  # tasks the last claim returned
        # Whether runs log their start: asked once per claim or push, not before every run.
        self._log_starts = logger.isEnabledFor(logging.INFO)

    def serve(self) -> int:
        """Run tasks until the parent closes the pipe or exits; return the exit code."""
        self.leases.start()
        try:
            return self._serve()
        finally:
            self._leave()
            self.leases.close()

    def _serve(self) -> int:
        if self.claim is not None:
            return self._serve_claiming(self.claim)
        return self._serve_pushed()

    def running_count(self) -> int:
        """Runs in their handlers now (this worker calls its handlers inline: none between
        two steps of its loop)."""
        return 0

    # -- the two loops -------------------------------------------------------------------------

    def _serve_pushed(self) -> int:
        while True:
            if not self.pending:
                self.flush()
                if not self._receive(block=True):
                    return 0
            elif self._poller.poll(0):
                # More work arrived while busy: take it now so the run queue never drains early.
                if not self._receive(block=False):
                    return 0
            if self.slot.stopping:
                self.hand_back()
                continue
            self._run_next()
            self._maybe_flush()

    def _serve_claiming(self, policy: ClaimPolicy) -> int:
        assert self.prefetch is not None
        try:
            listener = self.queue.store.listen()
        except Exception as exc:  # the wake-up is an optimisation; polling alone is correct
            logger.info("%s: no wake-up channel (%s); polling every %g s", self.name, exc,
                        policy.poll_interval)  # fmt: skip
            listener = None
        try:
            while True:
                stopping = self.slot.stopping
                if stopping:
                    self.hand_back()
                elif self.prefetch.wants_more(len(self.pending)) and not self._claim():
                    return 0
                if not self.pending:
                    self.flush()
                    if not self._idle(policy, listener, stopping):
                        return 0
                    continue
                if self._run_next():
                    self.prefetch.ran(self.done[-1][2])
                self._maybe_flush()
        finally:
            if listener is not None:
                listener.close()

    # -- claiming ------------------------------------------------------------------------------

    def _claim(self, *, may_sleep: bool = True) -> bool:
        """Claim up to the room left in this worker's depth; False when the parent is gone. A
        store that does not answer is tried again after a growing pause: slept here, or (without
        ``may_sleep``) noted in ``_retry_at`` for the caller's loop."""
        assert self.prefetch is not None
        self.last_got = 0
        room = self.prefetch.room(len(self.pending) + self.running_count())
        if room <= 0:
            return True
        # What ran is recorded before more is taken; its reports go with the claim's, in one
        # message: each message wakes the parent, which then competes with the workers for a CPU.
        wires = self.flush(send=False)
        now = system_now()
        since = time.monotonic()
        try:
            tasks = self.queue.claim(room, now=now, ahead=CLAIM_AHEAD)
        except StoreUnavailable as exc:
            if wires and not self._send(wires):
                return False
            self._backoff = min(max(self._backoff * 2, 0.1), MAX_BACKOFF)
            logger.warning("%s: store unavailable, retrying in %.1f s: %s", self.name,
                           self._backoff, exc)  # fmt: skip
            if not may_sleep:
                self._retry_at = time.monotonic() + self._backoff
                return True
            time.sleep(self._backoff)
            return os.getppid() == self.parent
        if self._backoff:
            logger.info("%s: store answers again", self.name)
            self._backoff = 0.0
        first = self._seq + 1
        self._log_starts = logger.isEnabledFor(logging.INFO)
        for task in tasks:
            self._seq += 1
            due = task.run_at if task.run_at > task.timestamp else task.timestamp
            # Claimed ahead of its time: held until then, on the wall clock (epoch seconds).
            not_before = to_micros(due) / 1_000_000 if due > now else None
            self.pending.append((self._seq, task, not_before))
            wires.append(messages.claimed(self._seq, task))
        self.leases.hold(enumerate(tasks, first), since)
        if wires and not self._send(wires):
            return False
        self.prefetch.claimed(len(tasks), room)
        self.last_got = len(tasks)
        return True

    def _idle(self, policy: ClaimPolicy, listener: Listener | None, stopping: bool) -> bool:
        """Sleep until the next task is due, a wake-up, the poll interval, or (stopping) the
        end of the pipe; False when the parent is gone."""
        timeout = policy.poll_interval
        if not stopping:
            try:
                next_run = self.queue.next_run_at()
            except StoreUnavailable:
                next_run = None
            if next_run is not None:
                ahead = next_run - timedelta(seconds=WAKE_AHEAD) - system_now()
                timeout = min(timeout, ahead.total_seconds())
        # Never spin: a due task another worker raced this one to would otherwise loop hot.
        timeout = max(timeout, 0.001)
        sources = [self.conn.fileno()]
        if listener is not None and not stopping:
            sources.append(listener.fileno())
        deadline = time.monotonic() + timeout
        ready = wait_readable(sources, timeout - TIMER_SLACK) if timeout > TIMER_SLACK else False
        if not ready:
            # poll() counts whole milliseconds, rounded up: the last stretch of a sleep towards a
            # task due at a precise time is slept with time.sleep (nanoseconds).
            remaining = deadline - time.monotonic()
            if 0 < remaining <= TIMER_SLACK:
                time.sleep(remaining)
        if listener is not None:
            listener.drain()
        if self._poller.poll(0):
            try:
                self.conn.recv()  # the parent only ever closes this pipe
            except (EOFError, OSError):
                return False
        return os.getppid() == self.parent

    def _receive(self, *, block: bool) -> bool:
        while block and not self.conn.poll(1.0):
            if os.getppid() != self.parent:
                return False
        try:
            batch: list[Push] = self.conn.recv()
        except (EOFError, OSError):
            return False
        self.leases.hold(((push.seq, push.task) for push in batch), time.monotonic())
        self.pending.extend(batch)
        self._log_starts = logger.isEnabledFor(logging.INFO)
        return True

    # -- running -------------------------------------------------------------------------------

    def _run_next(self) -> bool:
        """Run the next held task, not before its ``not_before`` (a task claimed or handed over a
        few milliseconds ahead of its time starts on the dot); False when it was not run (its
        lease was given back or cannot be kept)."""
        seq, task, not_before = self.pending.popleft()
        if not_before is not None:
            delay = not_before - time.time()
            if delay > 0:
                time.sleep(delay)
        may_run, status = self.leases.begin(seq)
        if not may_run:
            if status is None:
                logger.warning("%s: task %s (%s) not started: its lease cannot be kept",
                               self.name, task.id, task.party)  # fmt: skip
            self.notes.append(messages.report(seq, status, 0.0, None))
            return False
        started = time.monotonic()
        self.slot.set_run(0, started, seq)
        if self._log_starts:
            logger.info("task %s (%s) attempt %d started", task.id, task.party, task.attempts)
        outcome = run_task(task, self.registry)
        duration = time.monotonic() - started
        self.slot.set_run(0, started, -seq)
        self.leases.end(seq)
        if not self.done:
            self.first_done = time.monotonic()
        self.done.append((seq, outcome, duration))
        return True

    def _maybe_flush(self) -> None:
        # The commit window: a few milliseconds after the first unrecorded run ended, so a crash
        # re-runs little; a pushed worker also flushes past half of what it holds, so its parent
        # refills it while it runs the rest (a claiming worker flushes at its next claim).
        if self.done and (
            time.monotonic() - self.first_done > FLUSH_AFTER
            or (self.claim is None and len(self.done) > len(self.pending))
        ):
            self.flush()
        elif self.notes and not self.done:
            self._send(self._take_notes())

    def _take_notes(self) -> list[Wire]:
        notes, self.notes = self.notes, []
        return notes

    def flush(self, *, send: bool = True) -> list[Wire]:
        """Record finished outcomes in one store batch and report them to the parent (or, with
        ``send=False``, return the reports for the caller to send with its own message)."""
        wires = self._take_notes()
        if self.done:
            done, self.done = self.done, []
            statuses = self._record([outcome for _, outcome, _ in done])
            self.leases.drop(seq for seq, _, _ in done)
            every = ends_logged()
            for (seq, outcome, duration), status in zip(done, statuses, strict=True):
                if every or not outcome.ok or status is None:
                    log_end(outcome, status, duration)
                error = None if outcome.ok or outcome.error is None else outcome.error["type"]
                task = outcome.task
                due = task.run_at if task.run_at > task.timestamp else task.timestamp
                late = (outcome.started_on - due).total_seconds()
                wires.append(messages.report(seq, None if status is None else str(status),
                                             duration, error, late))  # fmt: skip
        if send:
            if wires:
                self._send(wires)
            return []
        return wires

    def _record(self, outcomes: Sequence[Outcome]) -> list[Status | None]:
        # A store that stops answering is retried for about one lease: beyond that the leases
        # have run out and lease recovery owns these tasks.
        deadline = time.monotonic() + self.lease_seconds
        delay = 0.05
        while True:
            try:
                return self.queue.record(outcomes)
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    logger.error("%s: outcomes of %d runs lost: %s", self.name, len(outcomes), exc)
                    return [None] * len(outcomes)
                logger.warning(
                    "%s: store unavailable, retrying in %.2fs: %s", self.name, delay, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                logger.exception("%s: cannot record %d outcomes", self.name, len(outcomes))
                return [None] * len(outcomes)

    # -- handing back and leaving ---------------------------------------------------------------

    def hand_back(self) -> None:
        """Give every unstarted run back to the queue without spending its attempt (shutdown)."""
        self.flush()
        self.pending = deque()
        taken = self.leases.take_unstarted()
        if not taken:
            return
        try:
            released = self.queue.release([task for _, task in taken])
        except Exception as exc:  # the parent releases whatever is not reported
            logger.warning("%s: cannot hand back %d tasks: %s", self.name, len(taken), exc)
            return
        self._send(
            [
                messages.report(seq, RELEASED if ok else None, 0.0, None)
                for (seq, _), ok in zip(taken, released, strict=True)
            ]
        )

    def _leave(self) -> None:
        """The parent is gone or closed the pipe: give back what never started, record what ran
        (both best effort: leases cover the rest)."""
        try:
            self.pending = deque()
            taken = self.leases.take_unstarted()
            if taken:
                self.queue.release([task for _, task in taken])
            if self.done:
                self._record([outcome for _, outcome, _ in self.done])
                self.done = []
        except Exception as exc:
            logger.warning("%s: leaving with unrecorded work (leases will recover it): %s",
                           self.name, exc)  # fmt: skip

    def _send(self, wires: Sequence[Wire]) -> bool:
        try:
            self.conn.send(wires)
        except OSError:
            return False  # the parent is gone; the loop notices at the next receive
        return True


def _relaxed(store_url: str) -> Store:
    store = open_store(store_url)
    store.relax_commits()
    return store
