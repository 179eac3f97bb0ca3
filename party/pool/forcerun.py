"""Force-run: the server's warm workers for ``POST /task/<id>``, behind a service process.

The server must not fork once it has threads (its executor, its event loop's helpers), yet dead
workers must be replaced. So the server forks one service process at start, before any thread
exists; that single-threaded process owns a ``WorkerPool`` of warm workers (and replaces them,
from its main thread, with backoff), and the server talks to it over a ``Channel``:
``ForceRunClient`` sends ``Run`` requests from the event loop and resolves a future per request
when the ``Ran`` answer arrives, never blocking the loop. A run the service could not start (its
worker died first) is tried again on a fresh worker, ``MAX_TRIES`` times in all; the answer says
whether the task ran, so the server never answers 200 for a run that did not happen. When the
server goes away the service stops its workers, handing back what did not finish. Imports
``asyncio`` (the client side), the package's ``supervisor`` and ``worker``, ``channel``,
``queue``, ``stores``, ``registry``, ``model`` and ``errors``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from typing import NamedTuple

from ..channel import Channel
from ..errors import Conflict, NotFound, PartyError, StoreUnavailable
from ..model import Status, Task
from ..queue import TaskQueue
from ..registry import Registry
from ..stores import open_store
from . import owner
from .child import STOP_SIGNALS
from .supervisor import Finished, WorkerPool

logger = logging.getLogger(__name__)

#: Runs of one request: the first, and fresh workers after workers that died before starting it.
MAX_TRIES = 3
#: Longest time a request waits for a free worker before it is handed back and refused; never
#: more than a third of the lease, which nobody renews while the claimed task waits.
MAX_WAIT = 20.0


class ForceRunUnavailable(PartyError):
    """The force-run could not happen (no worker, workers dying, the server stopping); the task
    is queued again as it was."""


class Run(NamedTuple):
    """Server to service: run this claimed task now."""

    seq: int
    task: Task


class Stop(NamedTuple):
    """Server to service: let runs in progress finish for ``grace`` seconds, then stop."""

    grace: float


class Ran(NamedTuple):
    """Service to server: how the run of request ``seq`` ended (``status`` after it), or why it
    did not happen (``refused``)."""

    seq: int
    status: str | None
    refused: str | None = None


class ForceRunService:
    """The service process's loop: requests in, runs dispatched to free workers, answers out."""

    def __init__(
        self, conn: Channel, size: int, store_url: str, registry: Registry, lease_seconds: float
    ) -> None:
        self.conn = conn
        self.owner = owner.identity(os.getppid())  # re-claims are the server's, like the first
        # The server took these leases: were this service's workers to outlive it, a scheduler
        # on this host would find the owner gone and run the task a second time beside them.
        self.pool = WorkerPool(
            size,
            store_url,
            registry,
            lease_seconds=lease_seconds,
            name="force-run",
            die_with_parent=True,
        )
        self.store_url = store_url
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.max_wait = min(MAX_WAIT, lease_seconds / 3)
        self.waiting: deque[tuple[int, Task, int, float]] = deque()
        self.running: dict[int, tuple[int, Task, int]] = {}  # pool seq -> (request, task, tries)
        self.queue: TaskQueue | None = None

    def serve(self) -> int:
        """Run until the server says stop or goes away; return the exit code."""
        self.pool.start()  # forked before this process opens anything
        self.queue = TaskQueue(
            open_store(self.store_url),
            self.registry,
            lease_seconds=self.lease_seconds,
            owner=self.owner,
        )
        self.pool.attach_queue(self.queue)
        while True:
            self.pool.wait(0.5, [self.conn])
            if self.conn.poll():
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    message = Stop(0.0)  # the server is gone: nobody waits for an answer
                if isinstance(message, Stop):
                    return self._stop(message.grace)
                self.waiting.append((message.seq, message.task, 1, time.monotonic()))
            self._settle(self.pool.poll())
            self._dispatch()

    def _dispatch(self) -> None:
        while self.waiting and self.pool.free:
            request, task, tries, _ = self.waiting.popleft()
            self.running[self.pool.dispatch(task)] = (request, task, tries)
        now = time.monotonic()
        while self.waiting and now - self.waiting[0][3] > self.max_wait:
            request, task, _, _ = self.waiting.popleft()
            self._refuse(request, task, f"no force-run worker was free for {self.max_wait:g} s")

    def _settle(self, finished: list[Finished]) -> None:
        for item in finished:
            request, task, tries = self.running.pop(item.seq, (None, None, 0))
            if request is None or task is None:
                continue
            if not item.released:
                self._answer(Ran(request, None if item.status is None else str(item.status)))
            elif tries < MAX_TRIES and self._claim_again(task):
                logger.warning("force-run of task %s: its worker died before starting it; "
                               "trying a fresh worker", task.id)  # fmt: skip
                self.waiting.appendleft((request, self._last_claim, tries + 1, time.monotonic()))
            else:
                self._answer(Ran(request, None, "its worker died before starting it, "
                                 f"{tries} times; the task is queued again"))  # fmt: skip

    def _claim_again(self, task: Task) -> bool:
        assert self.queue is not None
        try:
            self._last_claim = self.queue.claim_now(task.id)
        except (Conflict, NotFound, StoreUnavailable):
            return False
        return True

    def _refuse(self, request: int, task: Task, why: str) -> None:
        assert self.queue is not None
        try:
            self.queue.release([task])
        except StoreUnavailable:
            pass  # its lease recovers it
        self._answer(Ran(request, None, f"{why}; the task is queued again"))

    def _answer(self, ran: Ran) -> None:
        try:
            self.conn.send(ran)
        except OSError:
            pass  # the server is gone

    def _stop(self, grace: float) -> int:
        for request, task, _, _ in list(self.waiting):
            self._refuse(request, task, "the server is stopping")
        self.waiting.clear()
        for item in self.pool.stop(grace):
            request, _, _ = self.running.pop(item.seq, (None, None, 0))
            if request is None:
                continue
            if item.released:
                self._answer(Ran(request, None, "the server is stopping and interrupted this "
                                 "run; the task is queued again"))  # fmt: skip
            else:
                self._answer(Ran(request, None if item.status is None else str(item.status)))
        if self.queue is not None:
            self.queue.store.close()
        return 0


class ForceRunClient:
    """The server's side: ``start`` forks the service (call it before any thread exists);
    ``await run(task)`` runs a claimed task and returns its status after the run, or raises
    ``ForceRunUnavailable``; ``stop`` ends the service."""

    def __init__(
        self, size: int, store_url: str, registry: Registry, *, lease_seconds: float = 60.0
    ) -> None:
        self.size = size
        self.store_url = store_url
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.pid = 0
        self._conn: Channel | None = None
        self._seq = 0
        self._futures: dict[int, asyncio.Future[Status | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_code: int | None = None

    def start(self) -> None:
        """Fork the service process, which forks the warm workers."""
        parent, child = Channel.pair()
        server = os.getpid()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:
            code = 1
            try:
                parent.close()
                # The server decides when its service stops (it sends Stop, or goes away).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                if not owner.die_with_parent(signal.SIGKILL) or os.getppid() != server:
                    os._exit(1)
                service = ForceRunService(
                    child, self.size, self.store_url, self.registry, self.lease_seconds
                )
                code = service.serve()
            except BaseException:
                logger.exception("the force-run service crashed")
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self._conn = parent
        logger.info("force-run service started (pid %d, %d workers)", pid, self.size)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the service's answers on ``loop`` (the server's event loop)."""
        assert self._conn is not None
        self._loop = loop
        loop.add_reader(self._conn.fileno(), self._on_readable)

    async def run(self, task: Task) -> Status | None:
        """Run ``task`` (claimed by the caller) now; its status afterwards (None: its outcome
        was discarded, the lease was lost). Raises ``ForceRunUnavailable`` when it did not run."""
        if self._conn is None or self._loop is None or self._exit_code is not None:
            raise ForceRunUnavailable("the force-run service is not running")
        self._seq += 1
        future: asyncio.Future[Status | None] = self._loop.create_future()
        self._futures[self._seq] = future
        try:
            self._conn.send(Run(self._seq, task))
        except OSError:
            self._futures.pop(self._seq, None)
            raise ForceRunUnavailable("the force-run service is gone") from None
        return await future

    @property
    def pending(self) -> int:
        """Requests waiting for their answer."""
        return len(self._futures)

    def _on_readable(self) -> None:
        assert self._conn is not None
        try:
            while self._conn.poll():
                self._resolve(self._conn.recv())
        except (EOFError, OSError):
            assert self._loop is not None
            self._loop.remove_reader(self._conn.fileno())
            self._exit_code = -1
            logger.error("the force-run service is gone; force-runs answer 503")
            self._fail_all("the force-run service stopped")

    def _resolve(self, ran: Ran) -> None:
        future = self._futures.pop(ran.seq, None)
        if future is None or future.done():
            return
        if ran.refused is not None:
            future.set_exception(ForceRunUnavailable(ran.refused))
        else:
            future.set_result(None if ran.status is None else Status(ran.status))

    def _fail_all(self, why: str) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ForceRunUnavailable(why))
        self._futures.clear()

    def stop(self, grace: float = 0.0) -> None:
        """Stop the service: runs in progress get ``grace`` seconds, then are handed back; every
        request still waiting is answered. Blocks until the service has exited."""
        if self._conn is None:
            return
        if self._loop is not None and self._exit_code is None:
            self._loop.remove_reader(self._conn.fileno())
        try:
            self._conn.send(Stop(grace))
            deadline = time.monotonic() + grace + 10.0
            while time.monotonic() < deadline and self._conn.poll(
                max(0.0, deadline - time.monotonic())
            ):
                self._resolve(self._conn.recv())
        except (EOFError, OSError):
            pass
        self._fail_all("the server is stopping and interrupted this run; the task is handed "
                       "back to the queue (or recovered when its lease expires)")  # fmt: skip
        self._conn.close()
        self._conn = None
        _wait_or_kill(self.pid, 5.0)


def _wait_or_kill(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
