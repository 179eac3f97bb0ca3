"""Force-run requests in flight, from before their claim to their answer.

A force-run claims its task (the task is then running, under a lease) and only then hands it to the
service. A server told to stop waits, within its grace period, for every request counted here, not
only for the runs the service already has: a request between its claim and its hand-over would
otherwise find the service stopped, answer 503 and leave its task to lease recovery. Once stopping,
the server refuses new force-runs before they claim anything. Imports ``server.pipeline`` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .pipeline import ApiError


class ForceRuns:
    """The count of force-run requests in flight on one server (its event loop's thread only)."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """One force-run request, its claim included; 503 once the server is stopping."""
        if self.stopping:
            raise ApiError(503, "the server is stopping: it starts no force-run now")
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1

    async def drain(self, timeout: float, abort: asyncio.Event) -> None:
        """Refuse new force-runs, and wait up to ``timeout`` seconds for those in flight (less if
        ``abort`` is set)."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count and loop.time() < deadline and not abort.is_set():
            await asyncio.sleep(0.05)
