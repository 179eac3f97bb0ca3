"""The worker process: the loop a pool child runs after the fork, until its parent is gone.

A worker opens its own store (a connection inherited across ``fork`` is never safe to use), ignores
SIGINT and SIGTERM (the scheduler decides when it stops), and runs tasks in order through
``runner.run_task``, none before its ``not_before`` (epoch seconds, for a task claimed a few
milliseconds ahead of its time). Where the tasks come from depends on the pool:

- the scheduler's workers claim for themselves (``ClaimPolicy``): each claims a batch in queue
  order when it runs low, tells its parent what it holds (``Claimed``), and sleeps while nothing
  is due until the next task's time, a wake-up from the store or the poll interval. No task
  crosses a process boundary and no process stands between the store and the run;
- the server's force-run workers run what their parent pushes down the pipe: lists of
  ``(seq, Task, not_before)``.

Outcomes are recorded by the worker itself through its own ``TaskQueue``, fenced by each run's
lease, in batches (one store transaction for several runs), and then reported to the parent as
small ``Report`` tuples. Before each run the worker writes the run's sequence number and start
time into memory it shares with the parent, so the parent can enforce timeouts and knows which
task a dead worker was running without a message per task. Imports ``runner``, ``queue``,
``stores``, ``registry``, ``channel``, ``model``, ``errors`` and ``timestamps``; never the
scheduler or the server.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import signal
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from .channel import Channel, wait_readable
from .errors import StoreUnavailable
from .model import Outcome, Status, Task
from .queue import TaskQueue
from .registry import Registry
from .runner import run_task
from .stores import open_store
from .stores.wakeup import Listener
from .timestamps import system_now, to_micros

logger = logging.getLogger(__name__)

# Shared slot layout: start of the current run (time.monotonic, which is system-wide on Linux),
# the run's sequence number (> 0 while its handler runs, negated once it returned), and a stop
# flag the parent raises so a worker hands back the runs it has not started. The worker writes
# only the first two fields and the parent only the third, each with one slice assignment:
# struct.pack_into zeroes its whole target before filling it, so a reader could see zeros.
SLOT = struct.Struct("@dqq")
RUN = struct.Struct("@dq")
STOP = struct.Struct("@q")
SLOT_SIZE = SLOT.size

#: Signals a worker ignores; the pool blocks them around the fork so none lands before that.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: Longest time a finished outcome waits in the worker before it is written to the store.
FLUSH_AFTER = 0.02
#: Status value a worker reports for a task it handed back unstarted (its attempt given back).
RELEASED = "released"


#: Most tasks a claiming worker holds at once under a backlog (the one running plus the prefetch).
MAX_DEPTH = 128
#: Seconds of expected work a worker may hold ahead: long tasks get no prefetch at all, no-op
#: tasks get batches large enough to share one store transaction between many of them.
PREFETCH_SECONDS = 0.05
#: Tasks due this soon are claimed now and held until their time, so that the claim happens
#: before the due time instead of after it.
CLAIM_AHEAD = 0.004
#: How long before a task's time an idle worker wakes to claim it (within CLAIM_AHEAD).
WAKE_AHEAD = 0.003
#: The last part of a sleep taken with a precise timer instead of poll()'s whole milliseconds.
TIMER_SLACK = 0.002
#: Longest pause before trying again a store that stopped answering (seconds).
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class ClaimPolicy:
    """Workers claim their own tasks: ``poll_interval`` is the longest idle sleep between looks
    at the store (the safety net behind the wake-up), ``max_depth`` the most a worker holds."""

    poll_interval: float = 1.0
    max_depth: int = MAX_DEPTH


class Claimed(NamedTuple):
    """A task a worker claimed, as it tells its parent: enough to renew its lease, hand it back,
    fail it if the worker dies, and enforce its handler's timeout. Five fields on the wire."""

    seq: int
    id: str
    party: str
    attempts: int
    lease: str | None


class Report(NamedTuple):
    """One finished (or handed back) run, as sent from a worker to its parent. Four fields on
    the wire."""

    seq: int
    status: str | None  # a Status value, RELEASED, or None when the outcome was discarded
    duration: float
    error: str | None  # the error type of a failed run


def new_slot() -> mmap.mmap:
    """Anonymous shared memory for one worker; create it before the fork."""
    return mmap.mmap(-1, SLOT_SIZE)


def read_slot(slot: mmap.mmap) -> tuple[float, int, int]:
    """(started, seq, stop) as last written; seq > 0 means that run is in its handler now.

    The worker may be writing while the parent reads: two equal reads in a row are a value that
    was really written, never a mix of an old and a new one.
    """
    value = SLOT.unpack_from(slot, 0)
    while True:
        again = SLOT.unpack_from(slot, 0)
        if again == value:
            return value
        value = again


def set_stop(slot: mmap.mmap) -> None:
    """Ask the worker to hand back the runs it has not started."""
    slot[RUN.size : SLOT.size] = STOP.pack(1)


def _set_run(slot: mmap.mmap, started: float, seq: int) -> None:
    slot[: RUN.size] = RUN.pack(started, seq)


class Worker:
    """The state of one worker process; ``serve`` is its whole life."""

    def __init__(
        self,
        conn: Channel,
        slot: mmap.mmap,
        store_url: str,
        registry: Registry,
        *,
        lease_seconds: float,
        name: str,
        claim: ClaimPolicy | None = None,
    ) -> None:
        self.conn = conn
        self.slot = slot
        self.registry = registry
        self.name = name
        self.parent = os.getppid()
        self.lease_seconds = lease_seconds
        self.queue = TaskQueue(open_store(store_url), registry, lease_seconds=lease_seconds)
        self.pending: deque[tuple[int, Task, float | None]] = deque()
        self.done: list[tuple[int, Outcome, float]] = []
        self.first_done = 0.0
        self._poller = select.poll()  # one poller for the life of the worker, not one per task
        self._poller.register(conn.fileno(), select.POLLIN)
        self.claim = claim
        self._seq = 0
        self._depth = 1
        self._mean_duration = 0.0
        self._backoff = 0.0
        self._starved = False

    def serve(self) -> int:
        """Run tasks until the parent closes the pipe or exits; return the exit code."""
        if self.claim is not None:
            return self._serve_claiming(self.claim)
        while True:
            if not self.pending:
                self.flush()
                if not self._receive(block=True):
                    return 0
            elif self._poller.poll(0):
                # More work arrived while busy: take it now so the run queue never drains early.
                if not self._receive(block=False):
                    return 0
            if read_slot(self.slot)[2]:
                self.hand_back()
                continue
            self._run_next()
            if (
                len(self.done) > len(self.pending)
                or time.monotonic() - self.first_done > FLUSH_AFTER
            ):
                # Past half of what it holds: record and report now, so the parent refills this
                # worker while it runs the rest, instead of after it has run dry.
                self.flush()

    def _serve_claiming(self, policy: ClaimPolicy) -> int:
        try:
            listener = self.queue.store.listen()
        except Exception as exc:  # the wake-up is an optimisation; polling alone is correct
            logger.info("%s: no wake-up channel (%s); polling every %g s", self.name, exc,
                        policy.poll_interval)  # fmt: skip
            listener = None
        try:
            while True:
                stopping = read_slot(self.slot)[2] != 0
                if stopping:
                    self.hand_back()
                elif self._wants_more() and not self._claim(policy):
                    return 0
                if not self.pending:
                    self.flush()
                    if not self._idle(policy, listener, stopping):
                        return 0
                    continue
                self._run_next()
                mean = self._mean_duration or self.done[-1][2]
                self._mean_duration = mean + 0.1 * (self.done[-1][2] - mean)
        finally:
            if listener is not None:
                listener.close()
            self._leave()

    def _wants_more(self) -> bool:
        # Refill at half depth while a backlog lasts; once a claim came back short (nothing more
        # was due), run what is held first instead of asking the store again after every run.
        if not self.pending:
            return True
        return not self._starved and len(self.pending) <= self._depth // 2

    def _claim(self, policy: ClaimPolicy) -> bool:
        """Claim up to the room left in this worker's depth; False when the parent is gone."""
        budget = policy.max_depth
        if self._mean_duration > 0:
            budget = min(budget, int(PREFETCH_SECONDS / self._mean_duration))
        self._depth = max(1, min(self._depth, budget))
        room = self._depth - len(self.pending)
        if room <= 0:
            return True
        # What ran is recorded before more is taken; its reports go with the claim's, in one
        # message: each message wakes the parent, which then competes with the workers for a CPU.
        messages = self.flush(send=False)
        now = system_now()
        try:
            tasks = self.queue.claim(room, now=now, ahead=CLAIM_AHEAD)
        except StoreUnavailable as exc:
            if messages and not self._send(messages):
                return False
            self._backoff = min(max(self._backoff * 2, 0.1), MAX_BACKOFF)
            logger.warning("%s: store unavailable, retrying in %.1f s: %s", self.name,
                           self._backoff, exc)  # fmt: skip
            time.sleep(self._backoff)
            return os.getppid() == self.parent
        if self._backoff:
            logger.info("%s: store answers again", self.name)
            self._backoff = 0.0
        self._starved = len(tasks) < room
        if tasks:
            for task in tasks:
                self._seq += 1
                due = task.run_at if task.run_at > task.timestamp else task.timestamp
                # Claimed ahead of its time: held until then, on the wall clock (epoch seconds).
                not_before = to_micros(due) / 1_000_000 if due > now else None
                self.pending.append((self._seq, task, not_before))
                messages.append((self._seq, task.id, task.party, task.attempts, task.lease))
        if messages and not self._send(messages):
            return False
        # Deeper only while the queue has more due tasks than this worker takes, and never more
        # than about PREFETCH_SECONDS of work.
        if len(tasks) == room:
            self._depth = min(self._depth * 2, budget)
        elif len(tasks) < room // 2:
            self._depth = max(1, self._depth // 2)
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
                self.conn.recv()  # the parent only ever closes this pipe, or nudges
            except (EOFError, OSError):
                return False
        return os.getppid() == self.parent

    def _leave(self) -> None:
        """The parent is gone or closed the pipe: give back what never started, record what ran
        (both best effort: leases cover the rest)."""
        try:
            pending, self.pending = list(self.pending), deque()
            if pending:
                self.queue.release([task for _, task, _ in pending])
            if self.done:
                self._record([outcome for _, outcome, _ in self.done])
                self.done = []
        except Exception as exc:
            logger.warning("%s: leaving with unrecorded work (leases will recover it): %s",
                           self.name, exc)  # fmt: skip

    def _receive(self, *, block: bool) -> bool:
        while block and not self.conn.poll(1.0):
            if os.getppid() != self.parent:
                return False
        try:
            batch = self.conn.recv()
        except (EOFError, OSError):
            return False
        self.pending.extend(batch)
        return True

    def _run_next(self) -> None:
        """Run the next held task, not before its ``not_before`` (a task claimed or handed over a
        few milliseconds ahead of its time starts on the dot)."""
        seq, task, not_before = self.pending.popleft()
        if not_before is not None:
            delay = not_before - time.time()
            if delay > 0:
                time.sleep(delay)
        self._run(seq, task)

    def _run(self, seq: int, task: Task) -> None:
        started = time.monotonic()
        _set_run(self.slot, started, seq)
        if logger.isEnabledFor(logging.INFO):
            logger.info("task %s (%s) attempt %d started", task.id, task.party, task.attempts)
        outcome = run_task(task, self.registry)
        duration = time.monotonic() - started
        _set_run(self.slot, started, -seq)
        if not self.done:
            self.first_done = time.monotonic()
        self.done.append((seq, outcome, duration))

    def flush(self, *, send: bool = True) -> list[tuple[Any, ...]]:
        """Record finished outcomes in one store batch and report them to the parent (or, with
        ``send=False``, return the reports for the caller to send with its own message)."""
        if not self.done:
            return []
        done, self.done = self.done, []
        statuses = self._record([outcome for _, outcome, _ in done])
        reports = []
        for (seq, outcome, duration), status in zip(done, statuses, strict=True):
            log_end(outcome, status, duration)
            error = None if outcome.ok or outcome.error is None else outcome.error["type"]
            reports.append((seq, None if status is None else str(status), duration, error))
        if send:
            self._send(reports)
            return []
        return reports

    def _record(self, outcomes: Sequence[Outcome]) -> list[Status | None]:
        # A store that stops answering is retried for about one lease: beyond that the parent has
        # stopped renewing anyway and lease recovery owns these tasks.
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

    def hand_back(self) -> None:
        """Give every unstarted run back to the queue without spending its attempt (shutdown)."""
        self.flush()
        pending, self.pending = list(self.pending), deque()
        if not pending:
            return
        try:
            released = self.queue.release([task for _, task, _ in pending])
        except Exception as exc:  # the parent releases whatever is not reported
            logger.warning("%s: cannot hand back %d tasks: %s", self.name, len(pending), exc)
            return
        self._send(
            [
                (seq, RELEASED if ok else None, 0.0, None)
                for (seq, _, _), ok in zip(pending, released, strict=True)
            ]
        )

    def _send(self, messages: Sequence[tuple[Any, ...]]) -> bool:
        """Send ``Claimed`` and ``Report`` fields as plain tuples (a named tuple pickles as a
        class reference and costs several times more); the parent tells them apart by length."""
        try:
            self.conn.send(messages)
        except OSError:
            return False  # the parent is gone; the loop notices at the next receive
        return True


def log_end(outcome: Outcome, status: Status | str | None, duration: float) -> None:
    """The one line that ends a run (id, handler, attempt, duration, outcome)."""
    if outcome.ok and status is not None and not logger.isEnabledFor(logging.INFO):
        return  # the common case under --log-level WARNING: build no line at all
    task = outcome.task
    head = f"task {task.id} ({task.party}) attempt {task.attempts}"
    if status is None:
        logger.warning("%s finished in %.3fs; outcome discarded: lease lost", head, duration)
    elif outcome.ok:
        if status == Status.QUEUED:
            logger.info("%s completed in %.3fs, next run %s", head, duration, outcome.next_run)
        else:
            logger.info("%s %s in %.3fs", head, status, duration)
    else:
        error = outcome.error or {}
        then = {Status.QUEUED: "will retry", Status.FAILED: "failed for good"}.get(
            Status(status), f"task is {status}"
        )
        logger.warning(
            "%s failed in %.3fs (%s: %s); %s\n%s",
            head,
            duration,
            error.get("type"),
            error.get("message"),
            then,
            (error.get("traceback") or "").rstrip(),
        )


def child_main(
    conn: Channel,
    slot: mmap.mmap,
    store_url: str,
    registry: Registry,
    *,
    lease_seconds: float,
    name: str,
    claim: ClaimPolicy | None = None,
) -> int:
    """Entry of a freshly forked worker: ignore stop signals, open the store, serve."""
    # Workers stay in the scheduler's process group (Ctrl-C and `kill -- -PGID` reach them) but
    # the scheduler alone decides: it drains, hands back and stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the pool around fork
    try:
        worker = Worker(
            conn, slot, store_url, registry, lease_seconds=lease_seconds, name=name, claim=claim
        )
    except StoreUnavailable as exc:
        logger.error("%s cannot open its store: %s", name, exc)
        return 3
    return worker.serve()
