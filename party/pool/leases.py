"""Leases: the one owner of the leases a worker holds, kept alive by a thread of that worker.

Every task a worker claims (or is handed) is leased in the store for ``lease_seconds``. The
process that runs a task is the one that keeps its lease alive: a ``Leases`` keeper thread in
each worker renews every lease the worker holds once a third of it has passed, so a stalled or
stopped scheduler process cannot let them lapse while its workers go on running. What a worker
cannot keep, it does not run: a run does not start on a lease with less than a third left, a
running task whose lease was lost or lapsed (the store stopped answering, the task was recovered
elsewhere) ends the worker at once (``LEASE_LOST_EXIT``), so two workers never run one task at
the same time. The keeper also hands back prefetched tasks held behind runs that have filled every
run slot of the worker for ``HOLD_BEHIND`` seconds (so a crash strands at most about a second of
work and other workers take them meanwhile), and is the backstop of a handler's ``timeout`` when
nothing else ended an overrun (it records the failure and ends the worker). Once the worker's
parent (the scheduler) is gone, nothing is renewed: a run that outlives its lease then ends the
worker like a lost lease, and the next scheduler recovers the task when the lease expires. A run
whose thread overran its timeout is ``end``-ed by its worker: its lease is kept until the worker
records the timeout, and the keeper no longer enforces it. Imports ``queue``, ``model``,
``registry``, ``errors`` and ``messages``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from ..errors import StoreUnavailable
from ..model import Task
from ..queue import TaskQueue, error_info
from ..registry import Registry
from ..timestamps import system_now
from .messages import RELEASED

logger = logging.getLogger(__name__)

#: Exit code of a worker that stopped because it could not keep the lease of a running task.
LEASE_LOST_EXIT = 4
#: Seconds a run may hold prefetched tasks back before they are handed back to the queue.
HOLD_BEHIND = 1.0
#: Seconds past a handler's ``timeout`` before the keeper fails the run itself (the parent
#: normally kills it on time; this covers a parent that is stopped or gone).
OVERRUN_GRACE = 2.0
#: Longest sleep of the keeper between two looks at the runs.
KEEPER_TICK = 0.25


class State(IntEnum):
    """Where a held task is: claimed and waiting, in its handler, finished but not recorded,
    or given back to the queue unstarted."""

    HELD = 0
    RUNNING = 1
    ENDED = 2
    GIVEN_UP = 3


# The members as module names: on Python 3.11 each ``State.X`` read costs about 90 ns (the enum's
# metaclass has a __getattr__, which keeps the read off the fast path), and ``begin`` and ``end``
# run once per run.
_HELD, _RUNNING, _ENDED, _GIVEN_UP = State.HELD, State.RUNNING, State.ENDED, State.GIVEN_UP


@dataclass(slots=True)
class _Held:
    task: Task
    valid_until: float  # time.monotonic() by which the lease runs out, as last renewed
    state: State = State.HELD
    started: float = 0.0
    released: bool = False  # the hand-back was written (its attempt given back)


class Leases:
    """The leases one worker holds, by the sequence number of each run.

    The worker's main thread calls ``hold`` after a claim, ``begin`` before a run (False: do not
    run it), ``end`` when the handler returned and ``drop`` once the outcome is recorded; the
    keeper thread (``start``) renews, hands back and enforces. ``open_queue`` opens the keeper's
    own queue, in its thread (a store connection is never shared between threads).
    """

    def __init__(
        self,
        open_queue: Callable[[], TaskQueue],
        registry: Registry,
        lease_seconds: float,
        *,
        name: str = "worker",
        exit: Callable[[int], object] = os._exit,
        capacity: int = 1,
        parent: int | None = None,
    ) -> None:
        self._open_queue = open_queue
        self._queue: TaskQueue | None = None
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.renew_every = lease_seconds / 3
        self.name = name
        self._exit = exit
        self.capacity = capacity  # runs at once: prefetched tasks wait only when all are busy
        self.parent = parent  # the scheduler's pid: its leases lapse once it is gone
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_renew = 0.0
        self._outage = False

    # -- the worker's side ---------------------------------------------------------------------

    def hold(self, runs: Iterable[tuple[int, Task]], since: float) -> None:
        """The ``(seq, task)`` runs were claimed (or handed over) at ``since``
        (``time.monotonic`` before the claim): their leases run until ``since + lease_seconds``
        unless renewed."""
        until = since + self.lease_seconds
        with self._lock:
            for seq, task in runs:
                self._held[seq] = _Held(task, until)

    def begin(self, seq: int) -> tuple[bool, str | None]:
        """Whether run ``seq`` may start now; when it may not, the status to report for it
        (``RELEASED`` when it was handed back, None when its lease is lost or running out)."""
        now = time.monotonic()
        with self._lock:
            held = self._held.get(seq)
            if held is None:
                return False, None
            if held.state == _GIVEN_UP:
                del self._held[seq]
                return False, RELEASED if held.released else None
            if held.valid_until - now < self.renew_every:
                del self._held[seq]
                return False, None
            held.state = _RUNNING
            held.started = now
            return True, None

    def end(self, seq: int) -> None:
        """The handler of run ``seq`` returned; its lease is kept until ``drop``."""
        # No lock: one store to a field is atomic under the GIL, and the keeper acts on RUNNING
        # only (a check-and-set, like ``begin``'s, takes the lock).
        held = self._held.get(seq)
        if held is not None:
            held.state = _ENDED

    def drop(self, seqs: Iterable[int]) -> None:
        """Forget runs whose outcome is recorded (or that were handed back)."""
        with self._lock:
            for seq in seqs:
                self._held.pop(seq, None)

    def take_unstarted(self) -> list[tuple[int, Task]]:
        """Mark every held task that has not started as given up and return them, for the caller
        to hand back (a stopping worker); tasks the keeper already gave back are not included."""
        with self._lock:
            taken = [(seq, h.task) for seq, h in self._held.items() if h.state == _HELD]
            for seq, _ in taken:
                del self._held[seq]
        return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    # -- the keeper ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper thread (a daemon: it never holds the worker's exit back)."""
        self._next_renew = time.monotonic() + self.renew_every
        self._thread = threading.Thread(target=self._keep, name=f"{self.name}-leases", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the keeper thread and close its store."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if self._queue is not None:
            try:
                self._queue.store.close()
            except Exception:  # closing is best effort
                pass

    def _keep(self) -> None:
        while not self._stop.wait(min(KEEPER_TICK, self.renew_every)):
            try:
                self.tick(time.monotonic())
            except Exception:  # the keeper must outlive any one failure
                logger.exception("%s: lease keeper failed a pass", self.name)

    @property
    def queue(self) -> TaskQueue:
        """The keeper's own queue, opened on first use in the keeper's thread."""
        if self._queue is None:
            self._queue = self._open_queue()
        return self._queue

    def tick(self, now: float) -> None:
        """One pass of the keeper: enforce overruns, hand back what waits behind a long run,
        renew when due, and end the worker if a running task's lease is gone."""
        with self._lock:
            held = list(self._held.items())
        running = [(seq, h) for seq, h in held if h.state == _RUNNING]
        for _, h in running:
            limit = self._timeout(h.task)
            if limit is not None and now - h.started > limit + OVERRUN_GRACE:
                self._fail_overrun(h, limit, now)
                return
        if len(running) >= self.capacity and all(now - h.started > HOLD_BEHIND for _, h in running):
            self._hand_back_behind(running[0][1])
        orphaned = self.parent is not None and os.getppid() != self.parent
        if now >= self._next_renew and held and not orphaned:
            self._renew([h for _, h in held if h.state != _GIVEN_UP], now)
        if now >= self._next_renew:
            self._next_renew = now + self.renew_every
        for _, h in running:
            if h.valid_until <= time.monotonic():
                why = "its scheduler is gone" if orphaned else "the store did not renew it"
                logger.error(
                    "%s: the lease of running task %s (%s) is lost or ran out (%s): stopping this "
                    "worker so that no other run of it overlaps this one",
                    self.name, h.task.id, h.task.party, why,
                )  # fmt: skip
                self._exit(LEASE_LOST_EXIT)
                return

    def _timeout(self, task: Task) -> float | None:
        handler = self.registry.get(task.party)
        return None if handler is None or handler.timeout is None else float(handler.timeout)

    def _renew(self, live: list[_Held], now: float) -> None:
        if not live:
            return
        try:
            kept = self.queue.renew([h.task for h in live])
        except StoreUnavailable as exc:
            if not self._outage:
                logger.warning("%s: cannot renew %d leases: %s", self.name, len(live), exc)
            self._outage = True
            return
        if self._outage:
            logger.info("%s: leases renewed again", self.name)
            self._outage = False
        with self._lock:
            for h, ok in zip(live, kept, strict=True):
                h.valid_until = now + self.lease_seconds if ok else 0.0

    def _hand_back_behind(self, running: _Held) -> None:
        with self._lock:
            waiting = [h for h in self._held.values() if h.state == _HELD]
            for h in waiting:
                h.state = _GIVEN_UP
        if not waiting:
            return
        try:
            released = self.queue.release([h.task for h in waiting])
        except StoreUnavailable as exc:
            logger.warning("%s: cannot hand back %d tasks: %s", self.name, len(waiting), exc)
            return
        with self._lock:
            for h, ok in zip(waiting, released, strict=True):
                h.released = ok
        logger.info(
            "%s: handed back %d prefetched tasks held behind task %s (%s), running for over %g s",
            self.name, len(waiting), running.task.id, running.task.party, HOLD_BEHIND,
        )  # fmt: skip

    def _fail_overrun(self, h: _Held, limit: float, now: float) -> None:
        message = f"timed out after {limit:g} s (ended by its own worker: nothing killed it)"
        task = h.task
        task.started_on = system_now() - timedelta(seconds=now - h.started)
        try:
            self.queue.fail(task, error_info("Timeout", message, at=system_now()))
        except StoreUnavailable as exc:
            logger.error("%s: cannot record the timeout of task %s: %s", self.name, task.id, exc)
        logger.error(
            "task %s (%s) attempt %d overran its timeout of %g s by %.1f s: stopping %s",
            task.id, task.party, task.attempts, limit, now - h.started - limit, self.name,
        )  # fmt: skip
        self._exit(LEASE_LOST_EXIT)
