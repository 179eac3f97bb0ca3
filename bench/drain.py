"""Drain: how fast ``python scheduler/ --workers 2`` empties a queue of no-op tasks.

The queue is filled beforehand (``TaskQueue.add`` in batches of 1,000, once per size, then the file
is copied for each run). The clock starts just before the scheduler process is started (so its
start-up and the workers' fork count, as in the peers' W2 "drain incl. worker start") and stops at
the first look at the store that finds no task queued or running; the store is looked at every
20 ms through a separate SQLite connection (an indexed count). The CPU time of the scheduler and its
workers, read from ``/proc`` at that moment, gives the CPU cost per task.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import harness

SECTION = "drain"
SIZES = (20_000, 100_000)
QUICK_SIZES = (5_000,)
TARGET = 22_000.0
POLL = 0.02
LIMIT = 180.0


def remaining(db: sqlite3.Connection) -> tuple[int, int]:
    """(tasks queued or running, tasks failed) in the store."""
    live = db.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')")
    failed = db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'failed'")
    return live.fetchone()[0], failed.fetchone()[0]


def drain_once(template: Path, n: int, tmp: Path) -> dict[str, Any]:
    """Copy the filled store, start the scheduler, time it until nothing is left."""
    path = tmp / "party.db"
    harness.copy_store(template, path)
    db = sqlite3.connect(path, timeout=30)
    started = time.perf_counter()
    scheduler = harness.start_scheduler(tmp, harness.store_url(path))
    cpu: dict[int, float] = {}
    try:
        while True:
            cpu.update(harness.tree_cpu([scheduler.pid]))
            live, failed = remaining(db)
            now = time.perf_counter()
            if live == 0:
                break
            if now - started > LIMIT or not scheduler.alive():
                raise RuntimeError(
                    f"drain of {n} stopped with {live} left after {now - started:.0f} s:\n"
                    + scheduler.tail()
                )
            time.sleep(POLL)
    finally:
        scheduler.stop()
        db.close()
    seconds = now - started
    cpu_total = sum(cpu.values())
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds,
        "wall_us_per_task": seconds / n * 1e6,
        "cpu_s": cpu_total,
        "cpu_us_per_task": cpu_total / n * 1e6,
        "failed": failed,
    }


def run(quick: bool, runs: int) -> dict[str, Any]:
    """Each size ``runs`` times on a copy of one filled store."""
    figures = []
    errors = []
    details = {}
    with harness.workdir() as tmp:
        for n in QUICK_SIZES if quick else SIZES:
            template = tmp / f"filled-{n}.db"
            fill_s = harness.fill_queue(template, n)
            harness.progress(f"drain: filled {n:,} tasks in {fill_s:.1f} s ({n / fill_s:,.0f}/s)")
            outcomes = []
            for k in range(runs):
                with harness.workdir() as run_dir:
                    outcome = drain_once(template, n, run_dir)
                outcomes.append(outcome)
                if outcome["failed"]:
                    errors.append(f"{n}: {outcome['failed']} tasks failed")
                harness.progress(
                    f"drain run {k + 1}/{runs} n={n:,}: {outcome['rate']:,.0f} tasks/s, "
                    f"{outcome['cpu_us_per_task']:.0f} CPU us/task"
                )
            details[n] = outcomes
            figures.append(
                harness.figure(
                    SECTION,
                    f"drain {n:,} no-op",
                    [o["rate"] for o in outcomes],
                    "tasks/s",
                    target=TARGET,
                )  # fmt: skip
            )
            figures.append(
                harness.figure(
                    SECTION,
                    f"drain {n:,} wall per task",
                    [o["wall_us_per_task"] for o in outcomes],
                    "us",
                )  # fmt: skip
            )
            figures.append(
                harness.figure(
                    SECTION,
                    f"drain {n:,} CPU per task (sched+workers)",
                    [o["cpu_us_per_task"] for o in outcomes],
                    "us",
                )  # fmt: skip
            )
    return {"figures": figures, "errors": errors, "runs_detail": details}
