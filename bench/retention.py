"""Retention on SQLite: how long a claim waits while a prune runs, and whether the file stops
growing when tasks flow through a store with a short retention.

``python bench/retention.py latency [N]``: N old completed tasks (default 1,000,000) are pruned by
a scheduler's ``Retention`` pass in another process (its batches, its pauses) while this process
claims and completes one task at a time; it prints the claim latency (p50, p99, max, the share
over 10 ms) during the prune and, for comparison, without one (``PRUNE_BATCH=500`` in the
environment tries another batch size). ``python bench/retention.py size [N]``: N tasks (default
2,000,000) are added, claimed, completed and pruned in steps of 10,000 on a simulated clock (one
second per step, ``keep_completed`` 10 s), printing the file size (database and log) every 100,000
tasks. Not part of ``make bench`` (minutes, and a 1 GB file); run it by hand.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from party.model import Status  # noqa: E402
from party.queue import TaskQueue  # noqa: E402
from party.registry import discover  # noqa: E402
from party.stores.sqlite import SqliteStore  # noqa: E402
from party.timestamps import system_now  # noqa: E402

HANDLERS = str(ROOT / "bench" / "handlers.py")


def _queue(path: Path, clock=system_now) -> TaskQueue:
    return TaskQueue(SqliteStore(path), discover([HANDLERS]), clock=clock)


def _fill_old(path: Path, n: int) -> None:
    """``n`` tasks completed 30 days ago, written straight into the table (fast)."""
    queue = _queue(path)
    for first in range(0, n, 5000):
        queue.add([{"party": "BenchNoop", "data": {"i": first + k}} for k in range(5000)])
    old = int((system_now() - timedelta(days=30)).timestamp() * 1e6)
    db = queue.store._db
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE tasks SET status = 'completed', completed_on = ?, created = ?", (old, old))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    queue.store.close()


def _prune(path: str, done: multiprocessing.Event) -> None:
    from party.scheduler.retention import PRUNE_BATCH, Retention

    queue = _queue(Path(path))
    queue.store.relax_commits()  # as the scheduler's retention connection
    batch = int(os.environ.get("PRUNE_BATCH", PRUNE_BATCH))
    retention = Retention(queue, keep_completed=7 * 86400, keep_failed=0, batch=batch, budget=1.0)
    while retention.tick(system_now()) or retention.next_at <= system_now():
        queue.store.maintain()  # as the scheduler's loop does at every pass: checkpoints
    done.set()


def _claims(queue: TaskQueue, seconds: float, stop: multiprocessing.Event | None) -> list[float]:
    """Claim and complete one task at a time for ``seconds`` (or until ``stop``): each claim's
    latency in ms."""
    from party.model import Outcome

    waits = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and not (stop is not None and stop.is_set()):
        queue.add([{"party": "BenchNoop"}])
        started = time.perf_counter()
        (task,) = queue.claim(1)
        waits.append((time.perf_counter() - started) * 1000)
        now = system_now()
        queue.record([Outcome(task, ok=True, started_on=now, finished_on=now)])
    return waits


def _summary(waits: list[float]) -> str:
    waits = sorted(waits)
    p99 = waits[int(len(waits) * 0.99)]
    slow = sum(1 for wait in waits if wait > 10) / len(waits)
    return (
        f"{len(waits):,} claims: p50 {statistics.median(waits):.2f} ms, p99 {p99:.2f} ms, "
        f"max {waits[-1]:.2f} ms, {slow:.2%} over 10 ms"
    )


def latency(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "party.db"
        started = time.perf_counter()
        _fill_old(path, n)
        print(f"filled {n:,} old completed tasks in {time.perf_counter() - started:.0f} s")
        queue = _queue(path)
        queue.store.relax_commits()  # as a worker's connection
        print("without a prune:", _summary(_claims(queue, 5.0, None)))
        done = multiprocessing.get_context("fork").Event()
        pruner = multiprocessing.get_context("fork").Process(target=_prune, args=(str(path), done))
        started = time.perf_counter()
        pruner.start()
        waits = _claims(queue, 3600.0, done)
        pruner.join()
        took = time.perf_counter() - started
        print(f"pruned {n:,} tasks in {took:.1f} s ({n / took:,.0f}/s)")
        print("during the prune:", _summary(waits))
        queue.store.close()


class _Clock:
    def __init__(self) -> None:
        self.now = system_now()

    def __call__(self):
        return self.now


def size(n: int, step: int = 10_000, keep: float = 10.0) -> None:
    from party.model import Outcome

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "party.db"
        clock = _Clock()
        queue = _queue(path, clock)
        queue.store.relax_commits()
        started = time.perf_counter()
        print("tasks through   file MB   log MB   stored tasks   pruned")
        for done in range(step, n + 1, step):
            queue.add([{"party": "BenchNoop", "data": {"i": i}} for i in range(step)])
            while tasks := queue.claim(128):
                now = clock()
                queue.record([Outcome(t, ok=True, started_on=now, finished_on=now) for t in tasks])
            while queue.prune(keep, 0, now=clock(), limit=500):
                pass
            queue.store.maintain()
            clock.now += timedelta(seconds=1)
            if done % 100_000 == 0:
                stats = queue.stats()
                db = os.path.getsize(path) / 1e6
                wal = os.path.getsize(str(path) + "-wal") / 1e6
                stored = sum(stats["statuses"].values())
                print(f"{done:>13,}   {db:7.1f}   {wal:6.1f}   {stored:12,}   {stats['pruned']:,}")
        took = time.perf_counter() - started
        kept = queue.stats()["statuses"][Status.COMPLETED]
        print(f"{n:,} tasks in {took:.0f} s; {kept:,} completed tasks kept")
        queue.store.close()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "latency"
    count = (
        int(sys.argv[2]) if len(sys.argv) > 2 else (1_000_000 if what == "latency" else 2_000_000)
    )
    {"latency": latency, "size": size}[what](count)
