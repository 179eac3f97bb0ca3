"""Restarts: when each worker of a pool is started again after it dies.

A worker that dies after a stable run (or is killed for an overrun, or retires) is replaced at
once. One that dies young (it cannot open its store, a start hook fails) is replaced after a delay
that doubles each time it dies young again, from ``FIRST_RESTART_DELAY`` up to
``MAX_RESTART_DELAY``, so that a broken start never spins the CPU; a stable run resets it. The
supervisor asks which restarts are due and forks them from its main thread. Standard library only.
"""

from __future__ import annotations

#: A worker that dies sooner than this after its start counts as failing to start (seconds).
STABLE_AFTER = 5.0
#: First and longest delay before restarting a worker that keeps failing to start (seconds).
FIRST_RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 30.0


class Restarts:
    """The pending restarts of a pool of ``size`` workers, on the ``time.monotonic`` clock."""

    def __init__(self, size: int) -> None:
        self._at: dict[int, float] = {}
        self._failures = [0] * size

    def __bool__(self) -> bool:
        return bool(self._at)

    def after_death(self, index: int, *, lived: float, young_counts: bool, now: float) -> float:
        """Schedule the restart of worker ``index``, dead after ``lived`` seconds; return the
        delay chosen. ``young_counts`` is False for a death that says nothing about its start
        (killed for an overrun, retired)."""
        young = young_counts and lived < STABLE_AFTER
        failures = self._failures[index] = self._failures[index] + 1 if young else 0
        delay = 0.0 if not failures else min(
            FIRST_RESTART_DELAY * 2 ** (failures - 1), MAX_RESTART_DELAY
        )  # fmt: skip
        self._at[index] = now + delay
        return delay

    def due(self, now: float) -> list[int]:
        """The workers whose restart delay has passed, taken off the list."""
        ready = [index for index, at in self._at.items() if at <= now]
        for index in ready:
            del self._at[index]
        return ready

    def soonest(self) -> float:
        """When the next restart is due (infinity when none is pending)."""
        return min(self._at.values(), default=float("inf"))

    def clear(self) -> None:
        """Forget every pending restart (the pool is stopping)."""
        self._at.clear()
