"""Scheduler: the loop that looks after a pool of workers that claim their own tasks.

The workers claim due tasks from the store in queue order, run them and keep their leases alive
(``pool``); the loop around them, steppable with ``tick(now)``, collects what they report,
recovers now and then the tasks whose lease expired (a crashed scheduler's), prunes ended tasks
past their keep time (``retention``), keeps the declared
schedules' tasks (``schedules``), and lets the pool
enforce timeouts and replace dead workers. ``run`` repeats passes, sleeping until a worker
reports or the poll interval ends; it retries a store that stops answering with backoff, and on a
stop request drains within the grace period and hands back what is unfinished. The loop has no
queue rules of its own: those live in ``queue``. Imports ``pool``, ``queue``, ``model``,
``errors`` and ``timestamps``; never the server, tornado or ``signal`` (``main`` owns the signal
handlers, which only set this loop's flags).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import StoreUnavailable
from ..model import Status, Task
from ..pool import Finished, WorkerPool, owner
from ..queue import TaskQueue
from ..timestamps import format_timestamp, system_now
from .heartbeat import Heartbeat
from .retention import Retention
from .schedules import Schedules

logger = logging.getLogger(__name__)

#: Expired leases recovered per store query.
RECOVER_BATCH = 100
#: Seconds between two looks for the leases of processes of this host that are gone.
ORPHAN_EVERY = 5.0
#: Longest backoff between attempts to reach a store that stopped answering (seconds).
MAX_BACKOFF = 5.0


@dataclass
class Tick:
    """What one pass did."""

    finished: list[Finished] = field(default_factory=list)
    recovered: int = 0


class Scheduler:
    """Looks after a ``WorkerPool`` whose workers claim the queue's due tasks themselves.

    ``clock`` gives naive UTC now (tests step it); ``wakeup`` is a descriptor that becomes
    readable to cut a sleep short (main's signal wake-up pipe). Set ``stop_requested`` (graceful)
    or ``abort_requested`` (immediate) to end ``run``: they are plain flags so that signal
    handlers may set them.
    """

    def __init__(
        self,
        queue: TaskQueue,
        pool: WorkerPool,
        *,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        clock: Callable[[], datetime] = system_now,
        wakeup: int | None = None,
        is_gone: Callable[[str], bool] = owner.is_gone,
        heartbeat: Heartbeat | None = None,
        retention: Retention | None = None,
        schedules: Schedules | None = None,
    ) -> None:
        self.queue = queue
        self.schedules = schedules
        self.is_gone = is_gone
        self.heartbeat = heartbeat
        self.retention = retention
        self.pool = pool
        self.poll_interval = poll_interval
        self.grace = grace
        self.clock = clock
        self.wakeup = wakeup
        self.stop_requested = False
        self.abort_requested = False
        lease = queue.lease.total_seconds()
        self.recover_every = timedelta(seconds=min(max(lease / 2, 0.5), 30.0))
        self._next_recover: datetime | None = None
        self._next_orphans: datetime | None = None

    # -- one pass ------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> Tick:
        """One pass: collect what the workers report, recover expired leases and those of dead
        processes of this host when due.

        Raises ``StoreUnavailable`` when the store does not answer (``run`` retries it).
        """
        now = now or self.clock()
        tick = Tick(finished=self.pool.poll())
        if self.heartbeat is not None and tick.finished:
            self.heartbeat.count_finished(tick.finished)
        self.queue.store.maintain()
        if self._next_recover is None or now >= self._next_recover:
            while True:  # a crashed scheduler may have left more than one batch
                recovered = self.queue.recover_expired(now=now, limit=RECOVER_BATCH)
                self._recovered(recovered, tick)
                if len(recovered) < RECOVER_BATCH:
                    break
            self._next_recover = now + self.recover_every
        if self._next_orphans is None or now >= self._next_orphans:
            # A dead process of this host (a crashed scheduler's workers) holds these leases:
            # taken back at once instead of one lease later.
            self._recovered(self.queue.recover_orphans(self._orphaned, now=now), tick)
            self._next_orphans = now + timedelta(seconds=ORPHAN_EVERY)
        if self.heartbeat is not None and self.heartbeat.due(now):
            self.heartbeat.running = self._running()
            self.heartbeat.beat(now)
        if self.schedules is not None and self.schedules.due(now):
            self.schedules.tick(now)
        if self.retention is not None:
            self.retention.tick(now)
        return tick

    def _orphaned(self, who: str) -> bool:
        # A worker of this pool that died is the pool's to account for (its unstarted tasks go
        # back without an attempt): only owners that are not among its workers are taken here.
        return self.is_gone(who) and owner.pid_of(who) not in self.pool.pids

    def _recovered(self, tasks: list[Task], tick: Tick) -> None:
        tick.recovered += len(tasks)
        if self.heartbeat is not None:
            self.heartbeat.count_recovered(tasks)

    def _running(self) -> list[dict[str, Any]]:
        """What runs where, as the heartbeat shows it."""
        running = []
        activity = self.pool.activity()
        if self.heartbeat is not None:
            self.heartbeat.watch_workers(activity)
        for worker in activity:
            task = worker["task"]
            if isinstance(task, dict):
                since = datetime.fromtimestamp(float(task["since"]), UTC).replace(tzinfo=None)
                running.append({"_id": task["_id"], "party": task["party"],
                                "since": format_timestamp(since), "worker": worker["worker"],
                                "pid": worker["pid"]})  # fmt: skip
        return running

    # -- the loop ------------------------------------------------------------------------------

    def run(self, until_idle: bool = False) -> int:
        """Run passes until stopped (or, with ``until_idle``, until nothing runs, nothing is due
        and no task is held anywhere); return the process exit code: 0 after a graceful stop, 1
        after an abort."""
        backoff = 0.0
        while True:
            if self.abort_requested:
                return self._abort()
            if self.stop_requested:
                return self._shutdown()
            try:
                self.tick()
                if until_idle and self._idle():
                    return 0
                timeout = self._sleep_for()
            except StoreUnavailable as exc:
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                logger.warning("store unavailable, retrying in %.1f s: %s", backoff, exc)
                self._wait(backoff)
                continue
            if backoff:
                logger.info("store answers again")
                backoff = 0.0
            self._wait(timeout)

    def _idle(self) -> bool:
        if self.pool.busy:
            return False
        next_run = self.queue.next_run_at()
        if next_run is not None and next_run <= self.clock():
            return False
        # A worker may have claimed a task and not yet said so: the store knows.
        return not self.queue.list(status=Status.RUNNING, limit=1)

    def _sleep_for(self) -> float:
        """How long the loop may sleep: until recovery is due or the poll interval ends (a
        worker's report, a timeout or a worker's restart ends it sooner)."""
        now = self.clock()
        wake = now + timedelta(seconds=self.poll_interval)
        beat = None if self.heartbeat is None else self.heartbeat.next_beat
        ensure = None if self.schedules is None else self.schedules.next_pass
        for due in (self._next_recover, self._next_orphans, beat, ensure):
            if due is not None:
                wake = min(wake, due)
        if self.retention is not None and self.retention.next_at is not None:
            wake = min(wake, self.retention.next_at)  # a backlog to prune: the next pass at once
        return max((wake - now).total_seconds(), 0.001)

    def _wait(self, timeout: float) -> None:
        extra = [] if self.wakeup is None else [self.wakeup]
        if self.pool.wait(timeout, extra) and self.wakeup is not None:
            _drain_fd(self.wakeup)

    # -- stopping ------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Graceful stop: the workers claim nothing more and hand back what they hold unstarted;
        running tasks may finish within the grace period, then what is unfinished is handed back
        without spending its attempt."""
        running = len(self.pool.running())
        logger.info(
            "stopping: no more claims; waiting up to %g s for %d running tasks", self.grace, running
        )
        self.pool.hand_back_unstarted()
        deadline = time.monotonic() + self.grace
        while True:
            try:
                self.tick()  # first: a worker may have claimed a task the pool has not heard of
            except StoreUnavailable as exc:
                logger.warning("store unavailable while stopping: %s", exc)
            if not self.pool.busy or time.monotonic() >= deadline:
                break
            if self.abort_requested:
                return self._abort()
            self._wait(min(0.1, max(0.0, deadline - time.monotonic())))
        handed_back = [f for f in self.pool.stop(0) if f.released]
        if handed_back:
            logger.info("handed back %d unfinished tasks to the queue", len(handed_back))
        self._last_beat()
        logger.info("stopped")
        return 0

    def _last_beat(self) -> None:
        """Say in the store that this scheduler stopped (it is no longer live at once)."""
        if self.heartbeat is None:
            return
        self.heartbeat.running = []
        self.heartbeat.stopped = self.clock()
        try:
            self.heartbeat.beat(self.clock())
        except StoreUnavailable as exc:
            logger.warning("could not record the stop in the store: %s", exc)

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
