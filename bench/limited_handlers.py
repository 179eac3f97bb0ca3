"""A capped handler for the drain with ``max_running`` (bench/drain.py): loaded beside
bench/handlers.py only for those runs, so that the other figures claim without caps."""

from __future__ import annotations

from party import TaskBase


class BenchCapped(TaskBase):
    """A task that does nothing, at most two at once across the store."""

    max_running = 2

    def run(self) -> None:
        return None
