"""WorkerPool: long-lived worker processes forked after the handlers are imported, one pipe each.

The pool owns the processes and the pipes to them: it forks ``size`` workers (``worker`` is the
child's loop), enforces each handler's ``timeout`` by killing a worker that runs one run at a
time (a worker that runs several, ``concurrency`` > 1, ends its own overruns and is killed only
as a backstop), replaces a worker that dies and logs why (exit code or signal), restarting one
that keeps dying young after a growing delay, and turns each run that died with its worker into
a failed attempt (``queue.fail``, fenced by the lease) while handing back the runs that worker
had not started; the worker's ``Slot`` says which runs were in progress. Forks happen only in
``start`` and ``maintain``, from the main thread of a process that has no other threads (a fork
from a threaded process can leave the child stuck on a lock another thread held). Its workers
either claim their own tasks (the scheduler's pool, given a ``ClaimPolicy``: they tell the pool
what they took) or run what the pool hands them (``dispatch``, for the force-run service). The
leases of what a worker holds are kept alive by that worker (``leases``); ``restarts`` says when
a dead worker is started again. Imports the package's ``worker``, ``slot``, ``messages`` and
``restarts``, and ``channel``, ``queue``, ``stores``, ``registry``, ``model`` and ``timestamps``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..channel import Channel, HasFileno, wait_readable
from ..model import Task
from ..queue import TaskQueue
from ..registry import Registry
from . import messages
from .child import RETIRED_EXIT, STOP_SIGNALS, child_main, kill, reap
from .claiming import ClaimPolicy
from .leases import OVERRUN_GRACE
from .messages import Claimed, Push
from .outcomes import Finished, Ledger, finished_from
from .restarts import Restarts
from .slot import Slot
from .worker import Worker

logger = logging.getLogger(__name__)

#: How often idle workers are checked with waitpid (a dead worker also closes its pipe).
REAP_INTERVAL = 1.0
#: Seconds past a handler's ``timeout`` before the pool kills a worker that runs several runs at
#: once and did not end its overrun itself (its event loop is blocked, say).
BACKSTOP_AFTER = 2 * OVERRUN_GRACE


class PoolStopped(RuntimeError):
    """The pool is stopping and takes no more work."""


@dataclass
class _Child:
    index: int
    pid: int
    conn: Channel
    slot: Slot
    born: float
    inflight: dict[int, Task | Claimed] = field(default_factory=dict)
    exit_code: int | None = None


class WorkerPool:
    """``size`` forked workers that run claimed tasks; each opens its own store from ``store_url``.

    Create and ``start`` it after the handlers are imported (``registry`` is inherited by the
    fork). ``queue`` is the parent's own queue, used to fail or hand back the runs of dead workers;
    by default the pool opens one on ``store_url`` when first needed. The owner calls ``poll``
    (or ``wait`` then ``poll``) in its loop: that collects reports, kills overruns and restarts
    dead workers when their delay has passed.
    """

    def __init__(
        self,
        size: int,
        store_url: str,
        registry: Registry,
        *,
        lease_seconds: float = 60.0,
        name: str = "worker",
        queue: TaskQueue | None = None,
        claim: ClaimPolicy | None = None,
        die_with_parent: bool = False,
        concurrency: int = 1,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        if concurrency < 1:
            raise ValueError(f"a worker runs at least one run at once, got {concurrency}")
        if concurrency > 1 and claim is None:
            raise ValueError("only workers that claim their own tasks run several at once")
        self.concurrency = concurrency
        self._factory: type[Worker] | None = None
        if concurrency > 1:
            # Imported here, before any fork, and only by pools that need it (asyncio is heavy).
            from .concurrent import ConcurrentWorker

            self._factory = ConcurrentWorker
        self.size = size
        self.store_url = store_url
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.name = name
        self.ledger = Ledger(store_url, registry, lease_seconds, name, queue)
        self.claim = claim
        self.die_with_parent = die_with_parent
        self._children: list[_Child | None] = [None] * size
        self._restarts = Restarts(size)
        self._seq = 0
        self._stopping = False
        self._last_reap = time.monotonic()

    # -- processes -----------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the workers."""
        for index in range(self.size):
            if self._children[index] is None:
                self._spawn(index)
        logger.info("%s pool started: %d workers", self.name, self.size)

    def _spawn(self, index: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("workers are forked only from the main thread")
        parent_conn, child_conn = Channel.pair()
        slot = Slot(self.concurrency)
        name = f"{self.name}-{index}"
        # Blocked across the fork so that a Ctrl-C arriving now cannot kill the child before it
        # ignores the stop signals; the child unblocks them in child_main.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:  # the child never returns from this branch
            code = 1
            try:
                parent_conn.close()
                for other in self._children:
                    if other is not None:
                        # Only the parent may hold the parent's ends: a sibling holding one would
                        # keep that worker from seeing EOF when the parent dies.
                        other.conn.close()
                code = child_main(
                    child_conn,
                    slot,
                    self.store_url,
                    self.registry,
                    lease_seconds=self.lease_seconds,
                    name=name,
                    claim=self.claim,
                    die_with_parent=self.die_with_parent,
                    concurrency=self.concurrency,
                    factory=self._factory,
                )
            except BaseException:
                logger.exception("%s crashed", name)
            finally:
                os._exit(code)
        child_conn.close()
        self._children[index] = _Child(index, pid, parent_conn, slot, time.monotonic())
        logger.debug("%s started (pid %d)", name, pid)

    def maintain(self) -> None:
        """Restart the workers whose restart delay has passed (main thread only)."""
        if self._stopping or not self._restarts:
            return
        for index in self._restarts.due(time.monotonic()):
            self._spawn(index)

    def attach_queue(self, queue: TaskQueue) -> None:
        """Use ``queue`` (opened after the fork) to fail or hand back the runs of dead workers."""
        self.ledger.queue = queue

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [c.pid for c in self._children if c is not None]

    # -- work ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while any worker holds a task that has not finished."""
        return any(c is not None and c.inflight for c in self._children)

    @property
    def free(self) -> int:
        """Number of live workers with nothing to do."""
        return sum(1 for c in self._children if c is not None and not c.inflight)

    @property
    def held(self) -> int:
        """Tasks workers hold that have not finished running (the prefetch and the runs); runs
        finished but not yet reported do not count."""
        return sum(_held(c) for c in self._children if c is not None)

    def running(self) -> list[Task | Claimed]:
        """Every task a worker holds and has not reported finished."""
        return [t for c in self._children if c is not None for t in c.inflight.values()]

    def activity(self) -> list[dict[str, object]]:
        """What the live workers run now: one entry per run in a handler (the worker's index and
        pid, and the task: ``_id``, ``party``, ``since`` as epoch seconds), and one with task None
        per idle worker."""
        now, wall = time.monotonic(), time.time()
        workers: list[dict[str, object]] = []
        for child in self._children:
            if child is None:
                continue
            runs = []
            for started, seq in child.slot.running():
                task = child.inflight.get(seq)
                if task is not None:
                    since = wall - (now - started)
                    runs.append({"_id": task.id, "party": task.party, "since": since})
            for running in runs or [None]:
                workers.append({"worker": child.index, "pid": child.pid, "task": running})
        return workers

    def dispatch(self, task: Task, not_before: float | None = None) -> int:
        """Hand one claimed task to a free worker (``free`` must be > 0); return its sequence
        number, which the ``Finished`` of its run carries. Only for pools whose workers do not
        claim for themselves."""
        if self.claim is not None:
            raise ValueError("this pool's workers claim their own tasks")
        if self._stopping:
            raise PoolStopped(f"the {self.name} pool is stopping")
        child = next((c for c in self._children if c is not None and not c.inflight), None)
        if child is None:
            raise ValueError("no free worker: check free before dispatching")
        self._seq += 1
        child.inflight[self._seq] = task
        try:
            child.conn.send([Push(self._seq, task, not_before)])
        except OSError:
            pass  # the worker died: the next poll sees its pipe closed and handles its task
        return self._seq

    def wait(self, timeout: float, extra: Iterable[int | HasFileno] = ()) -> bool:
        """Block until a worker reports (or dies), an ``extra`` fd is readable, a running task's
        timeout or a restart is due, or ``timeout`` seconds pass. True when something is ready."""
        conns = [c.conn for c in self._children if c is not None]
        timeout = min(timeout, self._next_deadline())
        return wait_readable([*conns, *extra], max(0.0, timeout))

    def poll(self, timeout: float = 0.0) -> list[Finished]:
        """Collect what finished: reports, dead workers (replaced in time), killed overruns.

        Waits up to ``timeout`` seconds for the first report.
        """
        if timeout > 0:
            self.wait(timeout)
        finished: list[Finished] = []
        for child in list(self._children):
            if child is None:
                continue
            try:
                while child.conn.poll():
                    finished.extend(self._finish(child, child.conn.recv()))
            except (EOFError, OSError):
                finished.extend(self._on_death(child, self._reap(child, block=True)))
                continue
            finished.extend(self._check_timeout(child))
        if time.monotonic() - self._last_reap > REAP_INTERVAL:
            self._last_reap = time.monotonic()
            for child in list(self._children):
                if child is not None:
                    reason = self._reap(child, block=False)
                    if reason is not None:
                        finished.extend(self._on_death(child, reason))
        self.maintain()
        return finished

    def _finish(self, child: _Child, wires: list[messages.Wire]) -> list[Finished]:
        # Reports are read in their wire form: one message object per run was a large part of
        # the scheduler's cost per task.
        finished = []
        inflight = child.inflight
        for wire in wires:
            if wire[0] == messages.REPORT:
                task = inflight.pop(wire[1], None)  # every kind carries its seq second
                if task is not None:
                    finished.append(finished_from(task, wire))
            else:
                claimed = messages.decode(wire)
                inflight[claimed.seq] = claimed
        return finished

    def _next_deadline(self) -> float:
        now = time.monotonic()
        soonest = self._restarts.soonest() - now
        for child in self._children:
            if child is None or not child.inflight:
                continue
            for started, seq in child.slot.running():
                limit = self._timeout_of(child.inflight.get(seq))
                if limit is not None:
                    soonest = min(soonest, started + limit - now)
        return soonest

    def _timeout_of(self, task: Task | Claimed | None) -> float | None:
        """When the pool kills the worker running ``task`` (seconds after its start)."""
        if task is None:
            return None
        handler = self.registry.get(task.party)
        if handler is None or handler.timeout is None:
            return None
        return float(handler.timeout) + (BACKSTOP_AFTER if self.concurrency > 1 else 0.0)

    def _check_timeout(self, child: _Child) -> list[Finished]:
        now = time.monotonic()
        for started, seq in child.slot.running():
            limit = self._timeout_of(child.inflight.get(seq))
            if limit is None or now - started < limit:
                continue
            task = child.inflight[seq]
            logger.warning(
                "task %s (%s) attempt %d overran its timeout of %g s: killing %s-%d (pid %d)",
                task.id, task.party, task.attempts, limit, self.name, child.index, child.pid,
            )  # fmt: skip
            kill(child.pid)
            reason = self._reap(child, block=True) or "killed"
            handler = self.registry.get(task.party)
            timeout = float(handler.timeout) if handler and handler.timeout else limit
            return self._on_death(child, reason, timed_out=(seq, timeout))
        return []

    def _reap(self, child: _Child, *, block: bool) -> str | None:
        """Why the worker ended (None if it still runs)."""
        reason, child.exit_code = reap(child.pid, block=block)
        return reason

    def _on_death(
        self, child: _Child, reason: str, *, timed_out: tuple[int, float] | None = None
    ) -> list[Finished]:
        """Account for a dead worker's tasks and schedule its replacement (unless stopping):
        each run it had in progress is failed (one attempt), what it had not started is handed
        back; ``timed_out`` is (seq, timeout) of the run it was killed for."""
        name = f"{self.name}-{child.index}"
        child.conn.close()
        self._children[child.index] = None
        in_progress = child.slot.running()
        child.slot.close()
        tasks = dict(child.inflight)
        finished: list[Finished] = []
        for started, seq in in_progress:
            running = tasks.pop(seq, None)
            if running is None:
                continue
            if self._stopping:
                tasks[seq] = running  # a worker that dies during a shutdown is a hand-back
                continue
            limit = timed_out[1] if timed_out is not None and timed_out[0] == seq else None
            finished.append(self.ledger.fail_run(running, seq, started, name, child.pid, reason,
                                           limit))  # fmt: skip
        if tasks:
            finished.extend(self.ledger.hand_back(tasks))
        if self._stopping:
            logger.info("%s (pid %d) %s", name, child.pid, reason)
            return finished
        now = time.monotonic()
        delay = self._restarts.after_death(
            child.index,
            lived=now - child.born,
            young_counts=timed_out is None and child.exit_code != RETIRED_EXIT,
            now=now,
        )
        if delay:
            logger.warning("%s (pid %d) %s; starting a new one in %.1f s", name, child.pid,
                           reason, delay)  # fmt: skip
        else:
            logger.warning("%s (pid %d) %s; starting a new one", name, child.pid, reason)
        if threading.current_thread() is threading.main_thread():
            self.maintain()
        return finished

    # -- stopping ------------------------------------------------------------------------------

    def hand_back_unstarted(self) -> None:
        """Ask every worker to hand back the tasks it holds but has not started (shutdown)."""
        self._stopping = True
        self._restarts.clear()
        for child in self._children:
            if child is not None:
                child.slot.set_stop()

    def stop(self, grace: float = 0) -> list[Finished]:
        """Stop the workers: let running tasks finish for up to ``grace`` seconds, then kill the
        workers and hand their unfinished tasks back to the queue (no attempt spent)."""
        self.hand_back_unstarted()
        finished: list[Finished] = []
        deadline = time.monotonic() + grace
        while self.busy and time.monotonic() < deadline:
            finished.extend(self.poll(min(0.1, max(0.0, deadline - time.monotonic()))))
        finished.extend(self.poll())
        children = [c for c in self._children if c is not None]
        for child in children:
            child.conn.close()  # an idle worker exits on EOF; a busy one is killed below
        exit_by = time.monotonic() + 0.5
        for child in children:
            while not child.inflight and time.monotonic() < exit_by:
                if self._reap(child, block=False) is not None:
                    break
                time.sleep(0.005)
            else:
                kill(child.pid)
                self._reap(child, block=True)
            self._children[child.index] = None
            if child.inflight:
                finished.extend(self.ledger.hand_back(dict(child.inflight)))
        logger.info("%s pool stopped", self.name)
        return finished

    def kill(self) -> None:
        """Kill every worker at once, writing nothing (an immediate exit; leases recover)."""
        self._stopping = True
        self._restarts.clear()
        for child in self._children:
            if child is not None:
                kill(child.pid)
                self._reap(child, block=True)
                child.conn.close()
        self._children = [None] * self.size


def _held(child: _Child) -> int:
    # Sequence numbers rise in the order a worker starts its runs; the slot holds the latest.
    entries = child.slot.entries()
    latest = max(abs(seq) for _, seq in entries)
    unstarted = sum(1 for seq in child.inflight if seq > latest)
    return unstarted + sum(1 for _, seq in entries if seq > 0 and seq in child.inflight)
