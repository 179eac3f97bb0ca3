"""Retention: the scheduler's pass that removes ended tasks past their keep time, bit by bit.

Completed and deleted tasks go ``keep_completed`` seconds after they ended, failed ones
``keep_failed`` seconds after (0 keeps that kind for ever), idempotency keys after a day. Each
removal is one short write of at most ``batch`` tasks (``TaskQueue.prune``), so a claim never
waits long behind it; a pass removes batches for at most ``budget`` seconds, pausing between
two so that waiting writers get the lock, and comes back at once while a backlog remains, else
after ``every`` seconds. Imports ``queue`` and ``errors`` only; the loop calls ``tick``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from ..errors import StoreUnavailable
from ..queue import TaskQueue

logger = logging.getLogger(__name__)

#: Tasks removed per write: about 2 ms of the writers' lock on SQLite. 500 pruned faster (35,000
#: tasks/s against 28,500) but doubled the claims' p99 while it ran (bench/retention.py latency).
PRUNE_BATCH = 250
#: Seconds one pass may spend removing batches (the loop's other work waits meanwhile).
PASS_BUDGET = 0.1
#: Seconds between two looks when the last pass found nothing more to remove.
PRUNE_EVERY = 10.0
#: Seconds between two batches of a pass: the writers queued behind one go first.
PAUSE = 0.002


class Retention:
    """Prunes ``queue``'s store now and then; ``tick(now)`` from the scheduler's loop."""

    def __init__(
        self,
        queue: TaskQueue,
        *,
        keep_completed: float,
        keep_failed: float,
        batch: int = PRUNE_BATCH,
        budget: float = PASS_BUDGET,
        every: float = PRUNE_EVERY,
    ) -> None:
        self.queue = queue
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.batch = batch
        self.budget = budget
        # A short keep time is looked at more often than ``every`` (a test's, a bench's).
        keeps = [keep for keep in (keep_completed, keep_failed) if keep > 0]
        self.every = timedelta(seconds=min([every] + [max(0.5, keep / 2) for keep in keeps]))
        #: When the next pass is due (None: at the first tick).
        self.next_at: datetime | None = None
        #: Tasks and keys removed by this process.
        self.removed = 0

    @property
    def enabled(self) -> bool:
        """False when nothing is pruned (both kept for ever; keys still expire, but a store
        without retention keeps their records, as it keeps the tasks)."""
        return self.keep_completed > 0 or self.keep_failed > 0

    def tick(self, now: datetime) -> int:
        """Remove what is due when a pass is due; return how many went in this pass. A store that
        does not answer is tried again at the next pass (the loop handles its outage)."""
        if not self.enabled or (self.next_at is not None and now < self.next_at):
            return 0
        removed = 0
        deadline = time.monotonic() + self.budget
        more = False
        try:
            while True:
                got = self.queue.prune(
                    self.keep_completed, self.keep_failed, now=now, limit=self.batch
                )
                removed += got
                more = got > 0
                if not more or time.monotonic() >= deadline:
                    break
                time.sleep(PAUSE)
        except StoreUnavailable as exc:
            logger.warning("retention: pruning stopped for now: %s", exc)
            more = False
        self.removed += removed
        if removed:
            logger.debug("retention: removed %d tasks or keys (%d in all)", removed, self.removed)
        # A backlog is taken up again at the next pass of the loop; else in ``every``.
        self.next_at = now if more else now + self.every
        return removed
