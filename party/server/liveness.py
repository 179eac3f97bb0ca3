"""The live schedulers as the server's answers see them: one read of their heartbeat records,
cached for about a second and refreshed off the event loop.

Every task an answer carries gets its ``waiting`` from one ``views.Live`` snapshot (no query per
task). ``LiveCache.get`` awaits a fresh one (at most ``probes.INTERVAL`` old); ``peek`` answers at
once with the latest one (or None before the first), starting a refresh when it is stale, for the
add path that runs on the event loop itself. Imports ``views`` and ``server.probes``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..model import Task
from ..timestamps import system_now
from ..views import Live, Views, waiting
from .probes import Cached


class LiveCache:
    """``Views.live()`` at most about a second old."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self._cached: Cached[Live] = Cached(views.live, name="live", answer_within=1.0)
        self._latest: Live | None = None

    async def get(self) -> Live:
        """A snapshot at most about a second old (``StoreUnavailable`` if the store is silent)."""
        self._latest = await self._cached.get()
        return self._latest

    def peek(self) -> Live | None:
        """The latest snapshot, fresh or not, or None before the first; starts a refresh in the
        background when it is stale (call on the event loop)."""
        if self._latest is None or not self._cached.is_fresh():
            task = asyncio.ensure_future(self.get())
            task.add_done_callback(_consume)
        return self._latest

    def close(self) -> None:
        self._cached.close()


def why(live: Live) -> Any:
    """The ``waiting`` function of the wire encoders for one answer: ``live`` at this instant."""
    now = system_now()

    def of(task: Task) -> dict[str, Any] | None:
        return waiting(task, live, now)

    return of


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
