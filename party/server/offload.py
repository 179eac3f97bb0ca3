"""Store calls off the event loop: a bounded pool of threads, each call within a deadline.

The event loop never waits on the store (the SQLite writers' lock held by a stopped process, a
slow disk, a Mongo round trip): a handler awaits ``StoreCalls(fn, ...)``, which runs ``fn`` in one
of ``threads`` threads under the store's ``lock_wait`` of what is left of ``deadline``. A call
that has not started when its deadline passes is cancelled; one that started cannot wait longer
than that for a lock and raises ``StoreBusy`` having written nothing. Either way the request is
answered 503 naming the cause, and an error answer always means nothing was written (a write that
got its locks is let finish, and answered with what it did).

``inline`` runs a small write on the event loop itself when the store says its writes are local
(``Store.inline_writes``) and its locks are free at that instant: a thread hop costs more than a
lone insert, and the single-task add is the hot path. Imports ``errors`` and ``stores.base``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import StoreBusy, StoreUnavailable
from ..stores.base import Store

T = TypeVar("T")

#: Seconds a request waits for the store (its turn in the pool, then the store's locks).
DEADLINE = 1.0
#: Threads that call the store at once; more calls wait their turn (within their deadline).
THREADS = 8


class StoreCalls:
    """Runs ``store`` calls in a pool of ``threads`` threads, each within ``deadline`` seconds."""

    def __init__(self, store: Store, *, threads: int = THREADS, deadline: float = DEADLINE):
        self.store = store
        self.threads = threads
        self.deadline = deadline
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="party-store")

    def can_inline(self) -> bool:
        """True when small writes may be tried on the event loop (``inline``)."""
        return self.store.inline_writes

    def inline(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` now, in this thread, if the store's locks are free this instant; else
        ``StoreBusy`` with nothing written (then call it through the pool)."""
        with self.store.lock_wait(0):
            return fn(*args)

    async def __call__(self, fn: Callable[..., T], *args: Any, writes: bool = True) -> T:
        """``fn(*args)`` in a store thread; ``StoreUnavailable`` when it could not run in time.

        ``writes=False`` (a read) is answered at the deadline even if the call goes on, since
        giving up on it changes nothing; a write that started is awaited to its end (its lock wait
        is bounded by the deadline, the rest is the write itself).
        """
        submitted = time.monotonic()
        future = self._pool.submit(self._run, submitted, fn, args)
        waiting = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), self.deadline)
        except TimeoutError:
            if writes and not future.cancel():
                return await waiting
            waiting.add_done_callback(_consume)  # a read answered 503 may still end in error
            raise StoreUnavailable(
                f"the store did not answer within {self.deadline:g} s (all {self.threads} of "
                "the server's store threads are waiting on it: the store is slow or locked)"
            ) from None

    def _run(self, submitted: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        left = self.deadline - (time.monotonic() - submitted)
        if left <= 0:
            raise StoreBusy(
                f"the store did not take the request within {self.deadline:g} s (all "
                f"{self.threads} of the server's store threads were busy: the store is slow or "
                "locked)"
            )
        with self.store.lock_wait(left):
            return fn(*args)

    def close(self) -> None:
        """Stop taking calls; the calls in flight end by themselves (their waits are bounded)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
