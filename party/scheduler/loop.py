"""Scheduler: the loop that feeds the worker pool from the queue, steppable with ``tick(now)``.

One pass claims as many due tasks as the workers have room for (one each, plus a bounded prefetch
that grows only while a backlog lasts) in one store round trip, hands them to the pool, renews the
leases of the tasks in flight well before they expire, and now and then recovers tasks whose lease
expired (a crashed scheduler's). ``run`` repeats passes, sleeping until the next task is due, the
poll interval, a worker report or a wake-up from the store, whichever comes first; it retries a
store that stops answering with backoff, and on a stop request drains within the grace period and
hands back what is unfinished. The loop has no queue rules of its own: those live in ``queue``.
Imports ``pool``, ``queue``, ``model``, ``errors`` and ``timestamps``; never the server, tornado
or ``signal`` (``main`` owns the signal handlers, which only set this loop's flags).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..errors import StoreUnavailable
from ..model import Task
from ..pool import Finished, WorkerPool
from ..queue import TaskQueue
from ..timestamps import system_now

logger = logging.getLogger(__name__)

#: Most tasks a worker holds at once under a backlog (the one running plus the prefetch).
MAX_DEPTH = 128
#: Seconds of expected work a worker may hold ahead: long tasks get no prefetch at all, no-op
#: tasks get batches large enough to share one store transaction between many of them.
PREFETCH_SECONDS = 0.05
#: Expired leases recovered per store query.
RECOVER_BATCH = 100
#: Tasks due this soon are claimed now and held by their worker until their time, so that the
#: claim and the hand-off to a worker happen before the due time instead of after it.
CLAIM_AHEAD = 0.004
#: How long before a task's time an idle scheduler wakes to claim it (within CLAIM_AHEAD).
WAKE_AHEAD = 0.003
#: The last part of a sleep taken with a precise timer instead of poll()'s whole milliseconds.
TIMER_SLACK = 0.002
#: Longest backoff between attempts to reach a store that stopped answering (seconds).
MAX_BACKOFF = 5.0


@dataclass
class Tick:
    """What one pass did."""

    claimed: list[Task] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    renewed: int = 0
    lost: int = 0
    recovered: int = 0


class Scheduler:
    """Runs the queue's due tasks on a ``WorkerPool``.

    ``clock`` gives naive UTC now (tests step it); ``wakeup`` is a descriptor that becomes
    readable to cut a sleep short (main's signal wake-up pipe); ``max_depth`` bounds what one worker
    holds at once, which also stays within about ``PREFETCH_SECONDS`` of the mean run time. Set
    ``stop_requested`` (graceful) or ``abort_requested`` (immediate) to end ``run``: they are
    plain flags so that signal handlers may set them.
    """

    def __init__(
        self,
        queue: TaskQueue,
        pool: WorkerPool,
        *,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        max_depth: int = MAX_DEPTH,
        clock: Callable[[], datetime] = system_now,
        wakeup: int | None = None,
    ) -> None:
        self.queue = queue
        self.pool = pool
        self.poll_interval = poll_interval
        self.grace = grace
        self.max_depth = max(1, max_depth)
        self.clock = clock
        self.wakeup = wakeup
        self.stop_requested = False
        self.abort_requested = False
        lease = queue.lease.total_seconds()
        # Renew once a third of the lease is gone, so two renewals may fail before it expires.
        self.renew_every = timedelta(seconds=lease / 3)
        self.recover_every = timedelta(seconds=min(max(lease / 2, 0.5), 30.0))
        self._depth = 1
        self._mean_duration = 0.0
        self._next_renew: datetime | None = None
        self._next_recover: datetime | None = None
        self._listener = None

    # -- one pass ------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None, *, claim: bool = True) -> Tick:
        """One pass: collect finished runs, renew and recover leases when due, claim and dispatch.

        Raises ``StoreUnavailable`` when the store does not answer (``run`` retries it).
        """
        now = now or self.clock()
        tick = Tick(finished=self.pool.poll())
        for done in tick.finished:
            if not done.released:
                mean = self._mean_duration or done.duration
                self._mean_duration = mean + 0.1 * (done.duration - mean)
        if self._next_renew is None or now >= self._next_renew:
            self._renew(now, tick)
            self._next_renew = now + self.renew_every
        if self._next_recover is None or now >= self._next_recover:
            while True:  # a crashed scheduler may have left more than one batch
                recovered = len(self.queue.recover_expired(now=now, limit=RECOVER_BATCH))
                tick.recovered += recovered
                if recovered < RECOVER_BATCH:
                    break
            self._next_recover = now + self.recover_every
        if claim and not self.stop_requested and not self.abort_requested:
            self._depth = min(self._depth, self._depth_for_budget())
            room = self.pool.capacity(self._depth)
            if room:
                tick.claimed = self.queue.claim(room, now=now, ahead=CLAIM_AHEAD)
                if tick.claimed:
                    self.pool.submit(tick.claimed, self._depth, now=self.clock())
                self._adapt_depth(len(tick.claimed), room)
        return tick

    def _adapt_depth(self, claimed: int, room: int) -> None:
        """Prefetch deeper only while the queue has more due tasks than the workers take, and
        never more than about PREFETCH_SECONDS of work per worker."""
        if claimed == room:
            depth = self._depth * 2
        elif claimed < room // 2:
            depth = self._depth // 2
        else:
            return
        self._depth = max(1, min(depth, self._depth_for_budget()))

    def _depth_for_budget(self) -> int:
        if self._mean_duration <= 0:
            return self.max_depth
        return max(1, min(self.max_depth, int(PREFETCH_SECONDS / self._mean_duration)))

    def _renew(self, now: datetime, tick: Tick) -> None:
        running = self.pool.running()
        if not running:
            return
        kept = self.queue.renew(running, now=now)
        tick.renewed = sum(kept)
        lost = [task for task, ok in zip(running, kept, strict=True) if not ok]
        tick.lost = len(lost)
        # A lost lease is normal for a task that finished since the pool's last report.
        for task in lost:
            logger.debug("lease of task %s (%s) not renewed: no longer held", task.id, task.party)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, until_idle: bool = False) -> int:
        """Run passes until stopped (or, with ``until_idle``, until nothing runs and nothing is
        due); return the process exit code: 0 after a graceful stop, 1 after an abort."""
        try:
            self._listener = self.queue.store.listen()
        except Exception as exc:  # the wake-up is an optimisation; polling alone is correct
            logger.info("no wake-up channel (%s); polling every %g s", exc, self.poll_interval)
        try:
            return self._loop(until_idle)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _loop(self, until_idle: bool) -> int:
        backoff = 0.0
        while True:
            if self.abort_requested:
                return self._abort()
            if self.stop_requested:
                return self._shutdown()
            try:
                tick = self.tick()
                timeout = self._sleep_for(tick)
            except StoreUnavailable as exc:
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                logger.warning("store unavailable, retrying in %.1f s: %s", backoff, exc)
                self._wait(backoff)
                continue
            if backoff:
                logger.info("store answers again")
                backoff = 0.0
            if until_idle and not tick.claimed and not self.pool.busy:
                return 0
            if timeout > 0:
                self._wait(timeout)

    def _sleep_for(self, tick: Tick) -> float:
        """How long the loop may sleep after ``tick`` (0 when more is due now)."""
        if tick.claimed and self.pool.capacity(self._depth):
            return 0.0  # workers have room and the last claim may not have taken every due task
        now = self.clock()
        wake = now + timedelta(seconds=self.poll_interval)
        if self.pool.busy and self._next_renew is not None:
            wake = min(wake, self._next_renew)
        if self._next_recover is not None:
            wake = min(wake, self._next_recover)
        if self.pool.capacity(self._depth):
            next_run = self.queue.next_run_at()
            if next_run is not None:
                wake = min(wake, next_run - timedelta(seconds=WAKE_AHEAD))
        # Never spin: a due task another scheduler raced us to would otherwise loop hot.
        return max((wake - now).total_seconds(), 0.001)

    def _wait(self, timeout: float) -> None:
        extra: list[int] = []
        if self.wakeup is not None:
            extra.append(self.wakeup)
        if self._listener is not None:
            extra.append(self._listener.fileno())
        deadline = time.monotonic() + timeout
        # poll() counts whole milliseconds, rounded up: waking for a task due at a precise time
        # would be up to 1 ms late. The last stretch is slept with time.sleep (nanoseconds).
        ready = self.pool.wait(timeout - TIMER_SLACK, extra) if timeout > TIMER_SLACK else False
        if not ready:
            remaining = deadline - time.monotonic()
            if 0 < remaining <= TIMER_SLACK:
                time.sleep(remaining)
            ready = self.pool.wait(0, extra)
        if ready:
            if self._listener is not None:
                self._listener.drain()
            if self.wakeup is not None:
                _drain_fd(self.wakeup)

    # -- stopping ------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Graceful stop: claim nothing more, let running tasks finish within the grace period,
        then hand back what is unfinished without spending its attempt."""
        running = len(self.pool.running())
        logger.info(
            "stopping: no more claims; waiting up to %g s for %d running tasks", self.grace, running
        )
        self.pool.hand_back_unstarted()
        deadline = time.monotonic() + self.grace
        while self.pool.busy and time.monotonic() < deadline:
            if self.abort_requested:
                return self._abort()
            try:
                self.tick(claim=False)
            except StoreUnavailable as exc:
                logger.warning("store unavailable while stopping: %s", exc)
            self._wait(min(0.1, max(0.0, deadline - time.monotonic())))
        handed_back = [f for f in self.pool.stop(0) if f.released]
        if handed_back:
            logger.info("handed back %d unfinished tasks to the queue", len(handed_back))
        logger.info("stopped")
        return 0

    def _abort(self) -> int:
        """Immediate stop: kill the workers and write nothing; the tasks' leases recover them."""
        logger.warning("stopping at once: workers killed, their tasks recover when leases expire")
        self.pool.kill()
        return 1


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
