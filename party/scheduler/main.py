"""The scheduler's entry point: flags and environment to settings, logging, handlers, pool, loop.

The order matters: handlers are imported (``registry.discover``) before the pool forks, so every
worker inherits them, and the scheduler's own store is opened after the fork, so no worker inherits
a live connection. This module owns the scheduler's signal handlers, which only set the loop's
flags: the first SIGINT/SIGTERM asks for a graceful stop, the second for an immediate one. Imports
``config``, ``log``, ``registry``, ``stores``, ``queue``, ``pool`` and ``scheduler.loop``; never the
server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from .. import config
from ..errors import ConfigError, RegistryError, StoreUnavailable
from ..log import SCHEDULER, redact, setup_logging
from ..pool import ClaimPolicy, WorkerPool
from ..queue import TaskQueue
from ..registry import discover, running_limits
from ..stores import load_backend
from ..timestamps import system_now
from .heartbeat import FORGET_AFTER, Heartbeat
from .loop import Scheduler
from .retention import Retention
from .schedules import Schedules

logger = logging.getLogger(SCHEDULER)

SETTINGS = (
    "store", "tasks", "workers", "concurrency", "poll_interval", "lease", "grace", "log_level",
)  # fmt: skip

#: And the retention of ended tasks (``retention``).
SETTINGS += ("keep_completed", "keep_failed")


def build_parser() -> argparse.ArgumentParser:
    """The scheduler's command line (every flag also has a PARTY_* variable)."""
    parser = argparse.ArgumentParser(
        prog="python scheduler/",
        description="Run the queue's due tasks in a pool of forked worker processes.",
    )
    config.add_arguments(parser, SETTINGS)
    return parser


def main(argv: list[str] | None = None, *, early: list[int] | None = None) -> int:
    """Run the scheduler until SIGINT/SIGTERM; return the exit code (0 after a graceful stop).

    ``early`` collects stop signals that arrived before this call (the entry point installs its
    collector before the imports): they are acted on once the loop exists.
    """
    # A stop signal that arrives while the scheduler is still starting is kept and acted on once
    # the loop exists (a graceful stop, exit 0), instead of killing the process half set up.
    early = [] if early is None else early
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: early.append(signum))
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args)
    except ConfigError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        registry = discover(settings.tasks)
        running_limits(registry)  # a bad max_running stops the scheduler here, named
    except RegistryError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("handlers: %s", ", ".join(registry.names) or "none")
    declared = registry.declarations()  # checked by discover: a bad one stopped us above

    try:
        backend = load_backend(settings.store)  # imported before the fork: workers inherit it
        # Created and migrated once here, so the workers never race to set up a fresh store; this
        # connection is closed before the fork (a connection must never cross one).
        backend.from_url(settings.store).close()
    except (ConfigError, StoreUnavailable) as exc:
        logger.error("%s", exc)
        return 2
    pool = WorkerPool(
        settings.workers,
        settings.store,
        registry,
        lease_seconds=settings.lease,
        claim=ClaimPolicy(poll_interval=settings.poll_interval),
        concurrency=settings.concurrency,
    )
    pool.start()
    try:
        store = backend.from_url(settings.store)
    except (ConfigError, StoreUnavailable) as exc:
        logger.error("%s", exc)
        pool.kill()
        return 2
    store.relay_wakeups()  # one change stream for all the workers (closed with the store)
    queue = TaskQueue(store, registry, lease_seconds=settings.lease)
    pool.attach_queue(queue)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    started = system_now()
    heartbeat = Heartbeat(
        store,
        workers=settings.workers,
        concurrency=settings.concurrency,
        handlers=registry.names,
        started=started,
    )
    try:
        store.forget_schedulers(started - FORGET_AFTER)
    except StoreUnavailable as exc:
        logger.warning("could not remove old scheduler records: %s", exc)
    schedules = Schedules(queue, declared, heartbeat=heartbeat)
    # Retention writes through a connection of its own with relaxed commits: a batch lost to a
    # power cut is pruned again, and no prune holds the writers' lock while it waits for the disk.
    prune_store = backend.from_url(settings.store)
    prune_store.relax_commits()
    retention = Retention(
        TaskQueue(prune_store, registry),
        keep_completed=settings.keep_completed,
        keep_failed=settings.keep_failed,
    )
    scheduler = Scheduler(
        queue,
        pool,
        schedules=schedules,
        poll_interval=settings.poll_interval,
        grace=settings.grace,
        wakeup=wake_read,
        heartbeat=heartbeat,
        retention=retention,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only flags: the loop acts on them (the wake-up fd cuts its sleep short).
        if scheduler.stop_requested:
            scheduler.abort_requested = True
        scheduler.stop_requested = True

    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for signum in early:
        on_signal(signum, None)
    logger.info(
        "scheduler started: %d workers x %d runs at once, store %s, lease %g s, poll %g s, "
        "grace %g s",
        settings.workers, settings.concurrency, redact(settings.store), settings.lease,
        settings.poll_interval, settings.grace,
    )  # fmt: skip
    try:
        return scheduler.run()
    finally:
        store.close()
        prune_store.close()
