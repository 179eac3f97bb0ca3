"""WorkerPool: long-lived worker processes forked after the handlers are imported, one pipe each.

The pool owns the processes and the pipes to them: it forks ``size`` workers (``worker.py`` is the
child's loop), enforces each handler's ``timeout`` by killing the worker, replaces a worker that
dies and logs why (exit code or signal), and turns a run that died with its worker into a failed
attempt (``queue.fail``, fenced by the lease) while handing back the runs that worker had not
started. Its workers either claim their own tasks (the scheduler's pool, given a
``ClaimPolicy``: they tell the pool what they took) or run what the pool hands them (the
server's force-run, through the blocking, thread-safe ``run_one``; ``submit`` for tests and
tools). It sits below both users and imports neither; with ``worker.py`` it is the only module
that forks. Imports ``worker``, ``channel``, ``queue``, ``stores``, ``registry``, ``model`` and
``timestamps``.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .channel import Channel, HasFileno, wait_readable
from .model import Status, Task
from .queue import TaskQueue, error_info
from .registry import Registry
from .stores import open_store
from .timestamps import system_now
from .worker import (
    RELEASED,
    STOP_SIGNALS,
    Claimed,
    ClaimPolicy,
    Report,
    child_main,
    new_slot,
    read_slot,
    set_stop,
)

logger = logging.getLogger(__name__)

CLAIMED_FIELDS = len(Claimed._fields)

#: How often idle workers are checked with waitpid (a dead worker also closes its pipe).
REAP_INTERVAL = 1.0


class PoolStopped(RuntimeError):
    """``run_one`` was called on a pool that is stopping."""


@dataclass
class Finished:
    """What became of a task handed to the pool.

    ``status`` is the task's status after the run (None when its outcome was discarded because
    the lease was lost); ``released`` is True when it was handed back unstarted or at shutdown;
    ``error`` is the error type of a failed run.
    """

    task: Task | Claimed
    status: Status | None
    duration: float = 0.0
    error: str | None = None
    released: bool = False
    seq: int = 0


@dataclass
class _Child:
    index: int
    pid: int
    conn: Channel
    slot: mmap.mmap
    inflight: dict[int, Task | Claimed] = field(default_factory=dict)


class WorkerPool:
    """``size`` forked workers that run claimed tasks; each opens its own store from ``store_url``.

    Create and ``start`` it after the handlers are imported (``registry`` is inherited by the
    fork). ``queue`` is the parent's own queue, used to fail or hand back the runs of dead workers;
    by default the pool opens one on ``store_url`` when first needed.
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
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        self.size = size
        self.store_url = store_url
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.name = name
        self._queue = queue
        self.claim = claim
        self._children: list[_Child | None] = [None] * size
        self._seq = 0
        self._stopping = False
        self._last_reap = time.monotonic()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._polling = False
        self._waiting: set[int] = set()
        self._results: dict[int, Finished] = {}

    # -- processes -----------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the workers."""
        with self._lock:
            for index in range(self.size):
                if self._children[index] is None:
                    self._spawn(index)
        logger.info("%s pool started: %d workers on %s", self.name, self.size, self.store_url)

    def _spawn(self, index: int) -> None:
        parent_conn, child_conn = Channel.pair()
        slot = new_slot()
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
                )
            except BaseException:
                logger.exception("%s crashed", name)
            finally:
                os._exit(code)
        child_conn.close()
        self._children[index] = _Child(index, pid, parent_conn, slot)
        logger.debug("%s started (pid %d)", name, pid)

    def attach_queue(self, queue: TaskQueue) -> None:
        """Use ``queue`` (opened after the fork) to fail or hand back the runs of dead workers."""
        self._queue = queue

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [c.pid for c in self._children if c is not None]

    # -- dispatch ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while any task handed to the pool has not finished."""
        return any(c is not None and c.inflight for c in self._children)

    @property
    def free(self) -> int:
        """Number of workers with nothing to do."""
        return sum(1 for c in self._children if c is not None and not c.inflight)

    @property
    def held(self) -> int:
        """Tasks handed to workers that have not finished running (the prefetch and the runs);
        runs finished but not yet reported do not count."""
        return sum(_held(c) for c in self._children if c is not None)

    def capacity(self, depth: int = 1) -> int:
        """How many more tasks ``submit`` accepts when each worker may hold ``depth`` not yet
        finished running (the one it runs plus ``depth - 1`` prefetched).

        Runs a worker has finished but not yet reported do not count: the shared slot says how
        far it got, so a worker is refilled while it records, instead of running dry first.
        """
        return sum(max(0, depth - _held(c)) for c in self._children if c is not None)

    def running(self) -> list[Task | Claimed]:
        """Every task handed to the pool and not finished yet (their leases need renewing)."""
        with self._lock:
            return [t for c in self._children if c is not None for t in c.inflight.values()]

    def submit(self, tasks: Sequence[Task], depth: int = 1, *, now: datetime | None = None) -> None:
        """Hand claimed tasks to the workers, least loaded first, at most ``depth`` per worker;
        one pipe message per worker. Raises ValueError beyond ``capacity(depth)``. Given the
        caller's ``now``, a task claimed ahead of its time is held by its worker until then."""
        with self._lock:
            if self.claim is not None:
                raise ValueError("this pool's workers claim their own tasks")
            if len(tasks) > self.capacity(depth):
                raise ValueError(f"{len(tasks)} tasks exceed the pool's room ({depth} per worker)")
            batches: dict[int, list[tuple[int, Task, float | None]]] = {}
            children = [c for c in self._children if c is not None]
            # Each task goes to the worker holding the fewest unfinished runs, so that no worker
            # is given more than its ``depth`` (counting what is reported would miscount).
            load = {c.index: _held(c) for c in children}
            wall = time.time()
            for task in tasks:
                child = min(children, key=lambda c: load[c.index])
                load[child.index] += 1
                self._seq += 1
                not_before = None
                if now is not None:
                    # Relative to the caller's clock (tests step one), then on the wall clock.
                    early = (max(task.timestamp, task.run_at) - now).total_seconds()
                    not_before = wall + early if early > 0 else None
                batches.setdefault(child.index, []).append((self._seq, task, not_before))
            for index, batch in batches.items():
                self._send(self._children[index], batch)  # type: ignore[arg-type]

    def _send(self, child: _Child, batch: list[tuple[int, Task, float | None]]) -> None:
        for seq, task, _ in batch:
            child.inflight[seq] = task
        try:
            child.conn.send(batch)
        except OSError:
            pass  # the worker died: the next poll sees its pipe closed and handles its tasks

    def wait(self, timeout: float, extra: Iterable[int | HasFileno] = ()) -> bool:
        """Block until a worker reports (or dies), an ``extra`` fd is readable, a running task's
        timeout is due, or ``timeout`` seconds pass. True when something is ready."""
        with self._lock:
            conns = [c.conn for c in self._children if c is not None]
            timeout = min(timeout, self._next_deadline())
        return wait_readable([*conns, *extra], max(0.0, timeout))

    def poll(self, timeout: float = 0.0) -> list[Finished]:
        """Collect what finished: reports, dead workers (replaced), killed overruns.

        Waits up to ``timeout`` seconds for the first report.
        """
        if timeout > 0:
            self.wait(timeout)
        with self._lock:
            return self._collect()

    def _route(self, finished: list[Finished]) -> list[Finished]:
        """With the lock held: hand the results ``run_one`` callers wait for to them, and return
        the rest, so that ``poll`` and ``stop`` never swallow a blocking caller's answer."""
        if not self._waiting:
            return finished
        mine = [f for f in finished if f.seq in self._waiting]
        if not mine:
            return finished
        for item in mine:
            self._results[item.seq] = item
        self._cond.notify_all()
        return [f for f in finished if f.seq not in self._waiting]

    def _collect(self) -> list[Finished]:
        return self._route(self._collect_all())

    def _collect_all(self) -> list[Finished]:
        finished: list[Finished] = []
        for child in list(self._children):
            if child is None:
                continue
            try:
                while child.conn.poll():
                    messages: list[tuple[Any, ...]] = child.conn.recv()
                    finished.extend(self._finish(child, messages))
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
        return finished

    def _finish(self, child: _Child, messages: list[tuple[Any, ...]]) -> list[Finished]:
        finished = []
        for message in messages:
            if len(message) == CLAIMED_FIELDS:  # a claiming worker took this task
                claimed = Claimed._make(message)
                child.inflight[claimed.seq] = claimed
                continue
            report = Report._make(message)
            task = child.inflight.pop(report.seq, None)
            if task is None:
                continue
            if report.status == RELEASED:
                finished.append(Finished(task, Status.QUEUED, released=True, seq=report.seq))
            else:
                status = None if report.status is None else Status(report.status)
                finished.append(
                    Finished(task, status, report.duration, report.error, seq=report.seq)
                )
        return finished

    def _next_deadline(self) -> float:
        soonest = float("inf")
        now = time.monotonic()
        for child in self._children:
            if child is None or not child.inflight:
                continue
            started, seq, _ = read_slot(child.slot)
            limit = self._timeout_of(child.inflight.get(seq))
            if limit is not None:
                soonest = min(soonest, started + limit - now)
        return soonest

    def _timeout_of(self, task: Task | Claimed | None) -> float | None:
        if task is None:
            return None
        handler = self.registry.get(task.party)
        return None if handler is None or handler.timeout is None else float(handler.timeout)

    def _check_timeout(self, child: _Child) -> list[Finished]:
        started, seq, _ = read_slot(child.slot)
        limit = self._timeout_of(child.inflight.get(seq))
        if limit is None or time.monotonic() - started < limit:
            return []
        task = child.inflight[seq]
        logger.warning(
            "task %s (%s) attempt %d overran its timeout of %g s: killing %s-%d (pid %d)",
            task.id, task.party, task.attempts, limit, self.name, child.index, child.pid,
        )  # fmt: skip
        _kill(child.pid)
        reason = self._reap(child, block=True) or "killed"
        return self._on_death(child, reason, timed_out=limit)

    def _reap(self, child: _Child, *, block: bool) -> str | None:
        """Why the worker ended (None if it still runs)."""
        try:
            pid, status = os.waitpid(child.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return "vanished"
        if pid == 0:
            return None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return f"killed by signal {sig} ({signal.Signals(sig).name})"
        return f"exited with code {os.waitstatus_to_exitcode(status)}"

    def _on_death(
        self, child: _Child, reason: str, *, timed_out: float | None = None
    ) -> list[Finished]:
        """Account for a dead worker's tasks and replace it (unless the pool is stopping)."""
        name = f"{self.name}-{child.index}"
        child.conn.close()
        self._children[child.index] = None
        started, seq, _ = read_slot(child.slot)
        tasks = dict(child.inflight)
        running = tasks.pop(seq, None)
        finished: list[Finished] = []
        if running is not None and not self._stopping:
            duration = time.monotonic() - started
            failed = self._full_task(running)
            if timed_out is not None:
                kind, message = "Timeout", f"timed out after {timed_out:g} s"
            else:
                kind = "WorkerDied"
                message = f"the worker process running it ({name}, pid {child.pid}) {reason}"
            status = None
            if failed is not None:
                failed.started_on = system_now() - timedelta(seconds=duration)
                error = error_info(kind, message, at=system_now())
                status = self._store_call("fail", failed, error)
            logger.warning(
                "task %s (%s) attempt %d failed after %.3fs: %s; %s",
                running.id, running.party, running.attempts, duration, message,
                "will retry" if status == Status.QUEUED else f"task is {status}",
            )  # fmt: skip
            finished.append(Finished(running, status, duration, kind, seq=seq))
        elif running is not None:
            tasks[seq] = running  # a worker that dies during a shutdown is a hand-back
        if tasks:
            finished.extend(self._hand_back(tasks))
        if self._stopping:
            logger.info("%s (pid %d) %s", name, child.pid, reason)
        else:
            logger.warning("%s (pid %d) %s; starting a new one", name, child.pid, reason)
            self._spawn(child.index)
        return finished

    def _full_task(self, item: Task | Claimed) -> Task | None:
        """The task a run was of: a claiming worker only said which one, so it is read back
        (None when it is gone or its lease is no longer this run's)."""
        if isinstance(item, Task):
            return item
        task = self._store_call("get", item.id)
        if not isinstance(task, Task) or task.lease != item.lease:
            return None
        return task

    def _hand_back(self, tasks: dict[int, Task | Claimed]) -> list[Finished]:
        released = self._store_call("release", list(tasks.values()))
        if released is None:
            released = [False] * len(tasks)
        return [
            Finished(task, Status.QUEUED if ok else None, released=True, seq=seq)
            for (seq, task), ok in zip(tasks.items(), released, strict=True)
        ]

    def _store_call(self, method: str, *args: object) -> object:
        # The task's lease stays in the store if this fails, so lease recovery takes it over.
        try:
            if self._queue is None:
                self._queue = TaskQueue(
                    open_store(self.store_url), self.registry, lease_seconds=self.lease_seconds
                )
            return getattr(self._queue, method)(*args)
        except Exception as exc:
            logger.error(
                "%s pool: %s failed, lease recovery will take over: %s", self.name, method, exc
            )
            return None

    # -- the blocking force-run ----------------------------------------------------------------

    def run_one(self, task: Task) -> Status | None:
        """Run one already-claimed task on a free worker and wait for it; return its new status.

        Enforces the handler's timeout and survives a dying worker like any run. Thread-safe:
        concurrent callers each get a worker of their own, waiting while all are busy.
        """
        if self.claim is not None:
            raise ValueError("this pool's workers claim their own tasks")
        with self._cond:
            while True:
                if self._stopping:
                    raise PoolStopped(f"the {self.name} pool is stopping")
                child = next((c for c in self._children if c is not None and not c.inflight), None)
                if child is not None:
                    break
                self._wait_turn()
            self._seq += 1
            seq = self._seq
            self._waiting.add(seq)
            self._send(child, [(seq, task, None)])  # a force-run starts now, due or not
            try:
                while seq not in self._results:
                    self._wait_turn()
                return self._results.pop(seq).status
            finally:
                self._waiting.discard(seq)

    def _wait_turn(self) -> None:
        """With the lock held: either poll the workers for everyone, or wait for whoever does."""
        if self._polling:
            self._cond.wait(0.1)
            return
        self._polling = True
        self._cond.release()
        try:
            self.wait(0.05)
        finally:
            self._cond.acquire()
            self._polling = False
        self._collect()  # routes what this caller and the others wait for
        self._cond.notify_all()

    # -- stopping ------------------------------------------------------------------------------

    def hand_back_unstarted(self) -> None:
        """Ask every worker to hand back the tasks it holds but has not started (shutdown)."""
        self._stopping = True
        for child in self._children:
            if child is not None:
                set_stop(child.slot)

    def stop(self, grace: float = 0) -> list[Finished]:
        """Stop the workers: let running tasks finish for up to ``grace`` seconds, then kill the
        workers and hand their unfinished tasks back to the queue (no attempt spent)."""
        self.hand_back_unstarted()
        finished: list[Finished] = []
        deadline = time.monotonic() + grace
        while self.busy and time.monotonic() < deadline:
            finished.extend(self.poll(min(0.1, max(0.0, deadline - time.monotonic()))))
        finished.extend(self.poll())
        with self._lock:
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
                    _kill(child.pid)
                    self._reap(child, block=True)
                self._children[child.index] = None
                if child.inflight:
                    finished.extend(self._route(self._hand_back(dict(child.inflight))))
        logger.info("%s pool stopped", self.name)
        return finished

    def kill(self) -> None:
        """Kill every worker at once, writing nothing (an immediate exit; leases recover)."""
        self._stopping = True
        with self._lock:
            for child in self._children:
                if child is not None:
                    _kill(child.pid)
                    self._reap(child, block=True)
                    child.conn.close()
            self._children = [None] * self.size


def _unstarted(child: _Child) -> int:
    # Sequence numbers rise in the order a worker runs its tasks; the slot holds the current one.
    current = abs(read_slot(child.slot)[1])
    return sum(1 for seq in child.inflight if seq > current)


def _held(child: _Child) -> int:
    """Tasks a worker holds that have not finished running: the prefetch and the current run."""
    _, current, _ = read_slot(child.slot)
    running = 1 if current > 0 and current in child.inflight else 0
    return _unstarted(child) + running


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
