"""The worker that runs several runs at once (``--concurrency N`` > 1), on its own event loop.

An ``async def run`` handler runs as a task on the worker's event loop; a plain ``def run``
handler runs in a pool of ``N`` threads, made on the first such run; one worker runs both kinds,
at most ``N`` runs in all. The loop claims for the free run slots and the adaptive prefetch
(``claiming``), starts runs in queue order (none before its ``not_before``), records their
outcomes within the commit window (``FLUSH_AFTER``) and keeps each run's own entry in the shared
``Slot``, so the parent knows which runs a dead worker had in progress. The leases of every run
are kept by the worker's keeper thread (``leases``), as for one run at a time.

Timeouts are enforced here, per run: an async run that overruns is cancelled and fails; a thread
cannot be stopped, so its run is failed and its lease given up at once (its later outcome is
refused by the lease's fence) and the worker retires: it claims nothing more, hands back what it
holds unstarted, lets its other runs end and record, and exits with ``RETIRED_EXIT`` for the pool
to replace it. A watcher thread logs an async handler that blocks the event loop (a
``time.sleep`` or blocking I/O inside ``async def run``), naming the task and where it blocks.
Imports the package's ``worker``, ``claiming`` and ``messages``, and ``runner``, ``handler``,
``model``, ``queue``, ``errors`` and ``timestamps``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from ..handler import TaskBase
from ..model import Outcome, Task
from ..queue import error_info
from ..runner import is_async, run_task, run_task_async, worker_loop
from ..stores.wakeup import Listener
from ..timestamps import system_now
from . import messages
from .child import RETIRED_EXIT
from .claiming import WAKE_AHEAD, ClaimPolicy
from .leases import HOLD_BEHIND
from .worker import FLUSH_AFTER, Worker

logger = logging.getLogger(__name__)

#: Seconds the event loop may be held by one step of an async handler before the log says so.
BLOCKED_AFTER = 0.5
#: How often the loop proves it turns (and the watcher looks).
BEAT_EVERY = 0.1


@dataclass(slots=True)
class _Run:
    seq: int
    task: Task
    index: int  # its entry in the Slot
    started: float  # time.monotonic()
    started_on: datetime  # naive UTC, for a timeout's outcome
    future: asyncio.Future[Outcome] | None = None
    timer: asyncio.TimerHandle | None = None
    in_thread: bool = False
    timed_out: float | None = None  # the timeout it overran
    overran: bool = False  # a thread past its timeout: leased until it ends or the worker retires


class ConcurrentWorker(Worker):
    """A claiming worker with ``concurrency`` run slots; ``serve`` is its whole life."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.loop = worker_loop()
        self.threads: ThreadPoolExecutor | None = None
        self.runs: dict[int, _Run] = {}
        self.free_entries = list(range(self.concurrency - 1, -1, -1))
        self.leaving = False  # the parent closed the pipe or is gone
        self.retiring = False  # a thread overran its timeout
        self.dry_until = 0.0  # the last claim found nothing: claim again after a wake-up or this
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._beat = time.monotonic()

    def running_count(self) -> int:
        return len(self.runs)

    def _serve(self) -> int:
        assert self.claim is not None
        watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        watcher.start()
        try:
            return self.loop.run_until_complete(self._main(self.claim))
        finally:
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)

    async def _main(self, policy: ClaimPolicy) -> int:
        loop = self.loop
        try:
            listener: Listener | None = self.queue.store.listen()
        except Exception as exc:  # the wake-up is an optimisation; polling alone is correct
            logger.info("%s: no wake-up channel (%s); polling every %g s", self.name, exc,
                        policy.poll_interval)  # fmt: skip
            listener = None
        if listener is not None:
            loop.add_reader(listener.fileno(), self._on_wakeup, listener)
        loop.add_reader(self.conn.fileno(), self._on_pipe)
        self._on_beat()
        try:
            while True:
                if os.getppid() != self.parent:
                    self.leaving = True
                if self.slot.stopping or self.leaving or self.retiring:
                    self.hand_back()
                    if all(run.overran for run in self.runs.values()):
                        self._record_overruns()
                        self.flush()
                        return RETIRED_EXIT if self.retiring and not self.leaving else 0
                elif self._may_claim():
                    if not self._claim(may_sleep=False):
                        self.leaving = True
                        continue
                    if not self.last_got:
                        self._go_dry(policy)
                self._start_runs()
                self._maybe_flush()
                await self._sleep(self._timeout(policy))
        finally:
            loop.remove_reader(self.conn.fileno())
            if listener is not None:
                loop.remove_reader(listener.fileno())
                listener.close()

    # -- claiming ------------------------------------------------------------------------------

    def _may_claim(self) -> bool:
        assert self.prefetch is not None
        now = time.monotonic()
        if now < self._retry_at or now < self.dry_until:
            return False
        if len(self.runs) >= self.concurrency:
            # Every slot busy: prefetch only while some run is young, or the keeper would hand
            # the prefetch back (HOLD_BEHIND) and the next claim take it again, over and over.
            youngest = max(run.started for run in self.runs.values())
            if now - youngest > HOLD_BEHIND / 2:
                return False
        return self.prefetch.wants_more(len(self.pending), len(self.runs))

    def _go_dry(self, policy: ClaimPolicy) -> None:
        """Nothing was due: claim again after a wake-up, the next task's time or the poll."""
        wait = policy.poll_interval
        try:
            next_run = self.queue.next_run_at()
        except Exception:  # polling covers it
            next_run = None
        if next_run is not None:
            ahead = (next_run - system_now()).total_seconds() - WAKE_AHEAD
            wait = min(wait, max(ahead, 0.001))
        self.dry_until = time.monotonic() + wait

    def _on_wakeup(self, listener: Listener) -> None:
        listener.drain()
        self.dry_until = 0.0
        if self.prefetch is not None:
            self.prefetch.starved = False
        self._wake()

    def _on_pipe(self) -> None:
        # The parent only ever closes this pipe: readable means it is gone or stops this worker.
        self.loop.remove_reader(self.conn.fileno())
        self.leaving = True
        self._wake()

    # -- running -------------------------------------------------------------------------------

    def _start_runs(self) -> None:
        while self.pending and self.free_entries and not self.retiring:
            seq, task, not_before = self.pending[0]
            if not_before is not None and not_before > time.time():
                return
            self.pending.popleft()
            may_run, status = self.leases.begin(seq)
            if not may_run:
                if status is None:
                    logger.warning("%s: task %s (%s) not started: its lease cannot be kept",
                                   self.name, task.id, task.party)  # fmt: skip
                self.notes.append(messages.report(seq, status, 0.0, None))
                continue
            index = self.free_entries.pop()
            run = _Run(seq, task, index, time.monotonic(), system_now())
            self.slot.set_run(index, run.started, seq)
            if logger.isEnabledFor(logging.INFO):
                logger.info("task %s (%s) attempt %d started", task.id, task.party, task.attempts)
            handler = self.registry.get(task.party)
            if is_async(handler):
                future = self.loop.create_task(run_task_async(task, self.registry))
            else:
                if self.threads is None:
                    self.threads = ThreadPoolExecutor(
                        self.concurrency, thread_name_prefix=f"{self.name}-run"
                    )
                future = asyncio.wrap_future(self._submit(task), loop=self.loop)
                run.in_thread = True
            run.future = future
            self.runs[seq] = run
            future.add_done_callback(lambda _, run=run: self._ended(run))
            if handler is not None and handler.timeout is not None:
                limit = float(handler.timeout)
                run.timer = self.loop.call_later(limit, self._overran, run, limit)

    def _submit(self, task: Task) -> Future[Outcome]:
        assert self.threads is not None
        return self.threads.submit(run_task, task, self.registry)

    def _ended(self, run: _Run) -> None:
        duration = time.monotonic() - run.started
        self.slot.set_run(run.index, run.started, -run.seq)
        self.free_entries.append(run.index)
        if run.timer is not None:
            run.timer.cancel()
        outcome = self._outcome_of(run)
        self.runs.pop(run.seq, None)
        self.leases.end(run.seq)
        if not self.done:
            self.first_done = time.monotonic()
        self.done.append((run.seq, outcome, duration))
        if self.prefetch is not None:
            self.prefetch.ran(duration)
        self._wake()

    def _outcome_of(self, run: _Run) -> Outcome:
        future = run.future
        assert future is not None
        if run.timed_out is not None:
            return self._timeout_outcome(run, run.timed_out)
        if future.cancelled():
            return self._timeout_outcome(run, run.timed_out or 0.0)
        exc = future.exception()
        if exc is not None:  # only a BaseException gets past the runner
            now = system_now()
            error = error_info(type(exc).__name__, str(exc), "".join(
                traceback.format_exception(exc)), at=now)  # fmt: skip
            return Outcome(run.task, ok=False, started_on=run.started_on, finished_on=now,
                           error=error)  # fmt: skip
        return future.result()

    def _timeout_outcome(self, run: _Run, limit: float) -> Outcome:
        now = system_now()
        error = error_info("Timeout", f"timed out after {limit:g} s", at=now)
        return Outcome(run.task, ok=False, started_on=run.started_on, finished_on=now,
                       error=error)  # fmt: skip

    def _overran(self, run: _Run, limit: float) -> None:
        if run.seq not in self.runs or run.future is None or run.future.done():
            return
        run.timed_out = limit
        task = run.task
        if not run.in_thread:
            run.future.cancel()  # its outcome, a Timeout, is made when the task ends
            return
        # A thread cannot be stopped. Its run keeps its lease (renewed, as for a run that ended
        # and is not yet recorded), so no retry starts beside it, and this worker retires: it
        # takes no more runs, and once every run left has ended or overrun too, it records the
        # overruns as timed out and exits, which ends their threads. Marked ended in the slot:
        # the pool's backstop would otherwise kill the worker, and its other runs with it.
        run.overran = True
        self.leases.end(run.seq)
        self.slot.set_run(run.index, run.started, -run.seq)
        self.retiring = True
        logger.warning(
            "%s: task %s (%s) overran its timeout of %g s in a thread, which cannot be stopped: "
            "this worker takes no more runs; once its %d other runs have ended it records the "
            "timeout and is replaced, and the task's retry cannot start before",
            self.name, task.id, task.party, limit, len(self.runs) - 1,
        )  # fmt: skip
        self._wake()

    def _record_overruns(self) -> None:
        """Queue the timeouts of the runs whose threads overran (their leases are still this
        worker's) for the flush that precedes its exit; the exit ends their threads."""
        for seq, run in list(self.runs.items()):
            if run.overran and run.timed_out is not None:
                del self.runs[seq]
                if not self.done:
                    self.first_done = time.monotonic()
                duration = time.monotonic() - run.started
                self.done.append((seq, self._timeout_outcome(run, run.timed_out), duration))

    def _maybe_flush(self) -> None:
        if self.done and time.monotonic() - self.first_done > FLUSH_AFTER:
            self.flush()
        elif self.notes and not self.done:
            self._send(self._take_notes())

    # -- sleeping ------------------------------------------------------------------------------

    def _timeout(self, policy: ClaimPolicy) -> float:
        now = time.monotonic()
        timeout = policy.poll_interval
        if self.done:
            timeout = min(timeout, self.first_done + FLUSH_AFTER - now)
        if self.pending and self.free_entries:
            not_before = self.pending[0][2]
            if not_before is not None:
                timeout = min(timeout, not_before - time.time())
        for at in (self.dry_until, self._retry_at):
            if at > now:
                timeout = min(timeout, at - now)
        return max(timeout, 0.0005)

    async def _sleep(self, timeout: float) -> None:
        if self._woken:
            self._woken = False
            await asyncio.sleep(0)  # let ended runs' callbacks and ready tasks have their turn
            return
        waiter = self._waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None
            self._woken = False

    def _wake(self) -> None:
        self._woken = True
        if self._waiter is not None:
            _resolve(self._waiter)

    # -- the blocked-loop watcher --------------------------------------------------------------

    def _on_beat(self) -> None:
        self._beat = time.monotonic()
        self.loop.call_later(BEAT_EVERY, self._on_beat)

    def _watch(self) -> None:
        """(thread) Log an async handler that holds the event loop for ``BLOCKED_AFTER`` s."""
        loop_thread = threading.main_thread().ident
        reported = 0.0
        while True:
            time.sleep(BEAT_EVERY)
            beat = self._beat
            if time.monotonic() - beat < BLOCKED_AFTER or reported == beat:
                continue
            frame = sys._current_frames().get(loop_thread or 0)
            handler = where = None
            while frame is not None:
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, TaskBase):
                    handler = candidate
                    where = "".join(traceback.format_stack(frame, limit=1)).strip()
                    break
                frame = frame.f_back
            if handler is None:
                continue  # the worker's own store call, not a handler
            reported = beat
            logger.warning(
                "%s: the event loop is blocked: async handler %s (task %s, attempt %d) has held "
                "it for %.1f s; it calls blocking code (time.sleep, blocking I/O?) where it should "
                "await, and every other async run of this worker waits meanwhile\n%s",
                self.name, type(handler).__name__, handler._id, handler.attempts,
                time.monotonic() - beat, where,
            )  # fmt: skip


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
