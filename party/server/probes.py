"""What ``GET /stats`` and ``GET /health`` answer, computed off the event loop and cached.

``Cached`` holds one value computed by a function in a thread of its own (never the requests'
store threads, so a probe is answered while they all wait on the store), at most once per
``interval``, with at most one computation in flight that every waiting request shares. A caller
waits at most ``answer_within`` seconds: past that it gets ``StoreUnavailable`` while the
computation goes on for the next one.

``StatsCache`` refreshes the counts at most about once a second; after this server changed the
queue (an add, a delete, a force-run) it refreshes sooner, at most every ``MIN_GAP`` seconds, so a
client reads its own writes while a poller under a stream of adds costs a few store calls a
second. ``HealthCheck`` asks ``Store.check_writable`` at most about once a second and keeps the
answer, success or reason, for that long. Imports ``errors`` and ``stores.base``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from ..errors import StoreUnavailable

T = TypeVar("T")

#: Seconds a cached answer is served without asking the store again.
INTERVAL = 1.0
#: Shortest gap between two refreshes of the stats after this server wrote.
MIN_GAP = 0.2


class Cached(Generic[T]):
    """The value of ``compute()`` (or the ``StoreUnavailable`` it raised), at most ``interval``
    seconds old, computed in a thread of its own."""

    def __init__(
        self,
        compute: Callable[[], T],
        *,
        name: str,
        interval: float = INTERVAL,
        answer_within: float = 1.0,
    ) -> None:
        self.compute = compute
        self.interval = interval
        self.answer_within = answer_within
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"party-{name}")
        self._value: T | None = None
        self._error: StoreUnavailable | None = None
        self._at = -1e9  # monotonic time the cached answer was computed (started)
        self._pending: asyncio.Future[None] | None = None
        self._pending_since = 0.0

    @property
    def computed_at(self) -> float:
        """Monotonic time the cached answer's computation began."""
        return self._at

    def is_fresh(self, since: float = -1e9) -> bool:
        """True when the cached answer is younger than ``interval`` and began after ``since``."""
        return time.monotonic() - self._at < self.interval and self._at > since

    async def get(self, *, since: float = -1e9) -> T:
        """The cached value if fresh (computed after ``since``), else a new one; raises the
        ``StoreUnavailable`` it ended in, or one saying the store did not answer in time."""
        if not self.is_fresh(since) or (self._value is None and self._error is None):
            pending = self._pending
            if pending is None or pending.done() or self._pending_since <= since:
                pending = self._refresh()
            try:
                await asyncio.wait_for(asyncio.shield(pending), self.answer_within)
            except TimeoutError:
                waited = time.monotonic() - self._pending_since
                last = f"; last answer: {self._error}" if self._error is not None else ""
                raise StoreUnavailable(
                    f"the store has not answered for {waited:.1f} s{last}"
                ) from None
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def _refresh(self) -> asyncio.Future[None]:
        if self._pending is not None and not self._pending.done():
            # A refresh is in flight but began too early for this caller: chain the next one.
            previous = self._pending
            future = asyncio.ensure_future(self._after(previous))
        else:
            future = asyncio.ensure_future(self._run())
        self._pending = future
        self._pending_since = time.monotonic()
        return future

    async def _after(self, previous: asyncio.Future[None]) -> None:
        await asyncio.wait([previous])
        await self._run()

    async def _run(self) -> None:
        started = time.monotonic()
        try:
            value = await asyncio.wrap_future(self._thread.submit(self.compute))
        except StoreUnavailable as exc:
            self._error, self._at = exc, started
        else:
            self._value, self._error, self._at = value, None, started

    def close(self) -> None:
        """Stop the thread once its computation in flight (if any) ends."""
        self._thread.shutdown(wait=False, cancel_futures=True)


class StatsCache:
    """``TaskQueue.stats`` at most about a second old, and never older than this server's last
    write (refreshed at most every ``MIN_GAP`` seconds for that)."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._cached = Cached(stats, name="stats", answer_within=5.0)
        self._written = -1e9  # monotonic time of this server's last change to the queue

    def wrote(self) -> None:
        """Note that this server just changed the queue."""
        self._written = time.monotonic()

    async def get(self) -> dict[str, Any]:
        """The stats answer (``oldest_due_seconds`` as of when it was computed)."""
        if self._cached.is_fresh():
            written = self._written
            if self._cached.is_fresh(written):
                return await self._cached.get()
            # Older than this server's last write: refresh, but not more often than MIN_GAP.
            gap = MIN_GAP - (time.monotonic() - self._cached.computed_at)
            if gap > 0:
                await asyncio.sleep(gap)
            return await self._cached.get(since=written)
        return await self._cached.get(since=self._written)

    def close(self) -> None:
        self._cached.close()


class HealthCheck:
    """Whether the store takes a write, asked at most about once a second, answered within one."""

    def __init__(self, check_writable: Callable[[], None]) -> None:
        self._cached: Cached[bool] = Cached(self._check(check_writable), name="health")

    @staticmethod
    def _check(check_writable: Callable[[], None]) -> Callable[[], bool]:
        def check() -> bool:
            check_writable()
            return True

        return check

    async def get(self) -> None:
        """Return when the store took a write within the last second; else ``StoreUnavailable``
        with the reason."""
        await self._cached.get()

    def close(self) -> None:
        self._cached.close()
