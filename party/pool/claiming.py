"""Claiming: how much a worker that claims its own tasks takes at once, and when.

A worker claims a batch in queue order when it runs low, and holds it while it runs it. The depth
it may hold adapts: it doubles while each claim comes back full (a backlog) and halves when the
queue runs dry, and it is bounded both by count (``ClaimPolicy.max_depth``) and by time
(``PREFETCH_SECONDS`` of expected work at the mean duration of recent runs): long tasks get no
prefetch at all, no-op tasks get batches large enough to share one store transaction between
many of them, and a crash strands little work. Tasks due within ``CLAIM_AHEAD`` are claimed now
and held until their time, so the claim happens before the due time instead of after it.
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Most tasks a claiming worker holds at once under a backlog (the one running plus the prefetch).
MAX_DEPTH = 128
#: Seconds of expected work a worker may hold ahead of the run in progress.
PREFETCH_SECONDS = 0.05
#: Tasks due this soon are claimed now and held until their time.
CLAIM_AHEAD = 0.004
#: How long before a task's time an idle worker wakes to claim it (within CLAIM_AHEAD).
WAKE_AHEAD = 0.003


@dataclass(frozen=True)
class ClaimPolicy:
    """Workers claim their own tasks: ``poll_interval`` is the longest idle sleep between looks
    at the store (the safety net behind the wake-up), ``max_depth`` the most a worker holds."""

    poll_interval: float = 1.0
    max_depth: int = MAX_DEPTH


class Prefetch:
    """The adaptive depth of one claiming worker that runs up to ``concurrency`` runs at once.

    The depth counts every task held, running or not. It starts at ``concurrency`` (a worker with
    room for 64 runs claims 64), grows past it only under a backlog of runs known to be short, and
    its time budget is ``PREFETCH_SECONDS`` of expected work per run slot.
    """

    def __init__(self, policy: ClaimPolicy, concurrency: int = 1) -> None:
        self.policy = policy
        self.concurrency = concurrency
        self.cap = policy.max_depth + concurrency - 1
        self.depth = concurrency
        self.mean_duration = 0.0
        self.starved = False

    def _budget(self) -> int:
        if self.mean_duration <= 0:
            return self.cap
        ahead = int(PREFETCH_SECONDS * self.concurrency / self.mean_duration)
        return max(self.concurrency, min(self.cap, ahead))

    def wants_more(self, pending: int, running: int = 0) -> bool:
        """Whether to claim now, holding ``pending`` unstarted tasks beside ``running`` runs:
        when a free run slot has nothing to start, or at half depth while a backlog lasts; once
        a claim came back short (nothing more was due), run what is held first instead of
        asking the store again after every run."""
        if pending < self.concurrency - running:
            return True
        return not self.starved and pending + running <= self.depth // 2

    def room(self, held: int) -> int:
        """How many tasks the next claim may take, ``held`` being held already."""
        self.depth = max(self.concurrency, min(self.depth, self._budget()))
        return self.depth - held

    def claimed(self, got: int, room: int) -> None:
        """Adapt to a claim of ``room`` that returned ``got`` tasks: deeper only while the queue
        has more due tasks than this worker takes, and never beyond the time budget."""
        self.starved = got < room
        budget = self._budget()
        # Several run slots: no prefetch before a run has shown how long runs take (long runs
        # would hold tasks back that other workers could take).
        grow = self.concurrency == 1 or self.mean_duration > 0
        if got == room and grow:
            self.depth = min(self.depth * 2, budget)
        elif got < room // 2:
            self.depth = max(self.concurrency, self.depth // 2)

    def ran(self, duration: float) -> None:
        """Fold one run's duration into the mean (exponentially weighted)."""
        mean = self.mean_duration or duration
        self.mean_duration = mean + 0.1 * (duration - mean)
