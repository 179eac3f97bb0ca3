"""Drain: how fast ``python scheduler/ --workers 2`` empties a queue of no-op tasks.

The queue is filled beforehand (``TaskQueue.add`` in batches of 1,000, once per size, then the file
is copied for each run). The clock starts just before the scheduler process is started (so its
start-up and the workers' fork count, as in the peers' W2 "drain incl. worker start") and stops at
the first look at the store that finds no task queued or running; the store is looked at every
20 ms through a separate SQLite connection (an indexed count). The CPU time of the scheduler and its
workers, read from ``/proc`` at that moment, gives the CPU cost per task.

Two more drains measure ``max_running`` (``LIMITED_N`` tasks): the same no-op tasks with a capped
handler loaded (every claim then takes the capped path, though no task is capped), and a mix in
which one task in ten is of that handler (``BenchCapped``, at most 2 at once): the others drain
around the capped ones, which run two at a time.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import harness

LIMITED_HANDLERS = str(Path(__file__).resolve().parent / "limited_handlers.py")

SECTION = "drain"
SIZES = (20_000, 100_000)
QUICK_SIZES = (5_000,)
LIMITED_N = 20_000
QUICK_LIMITED_N = 5_000
#: One task in this many is capped in the mixed drain.
CAPPED_EVERY = 10
TARGET = 22_000.0
POLL = 0.02
LIMIT = 180.0


def remaining(db: sqlite3.Connection) -> tuple[int, int]:
    """(tasks queued or running, tasks failed) in the store."""
    live = db.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')")
    failed = db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'failed'")
    return live.fetchone()[0], failed.fetchone()[0]


def drain_once(template: Path, n: int, tmp: Path, limited: bool = False) -> dict[str, Any]:
    """Copy the filled store, start the scheduler, time it until nothing is left; ``limited``
    loads the capped handler beside the bench's."""
    path = tmp / "party.db"
    harness.copy_store(template, path)
    db = sqlite3.connect(path, timeout=30)
    started = time.perf_counter()
    extra = ["--tasks", f"{harness.HANDLERS},{LIMITED_HANDLERS}"] if limited else []
    scheduler = harness.start_scheduler(tmp, harness.store_url(path), extra=extra)
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


def fill_mixed(path: Path, n: int) -> None:
    """``n`` no-op tasks, one in ``CAPPED_EVERY`` of them ``BenchCapped``, in batches of 1,000."""
    from party.queue import TaskQueue
    from party.registry import discover
    from party.stores.sqlite import SqliteStore

    store = SqliteStore(path)
    queue = TaskQueue(store, discover([harness.HANDLERS, LIMITED_HANDLERS]))
    try:
        for first in range(0, n, 1000):
            queue.add([
                {"party": "BenchCapped" if (first + k) % CAPPED_EVERY == 0 else "BenchNoop",
                 "data": {"i": first + k}}
                for k in range(min(1000, n - first))
            ])  # fmt: skip
    finally:
        store.close()


def run_limited(quick: bool, runs: int, tmp: Path) -> tuple[list[dict[str, Any]], dict]:
    """The drains with ``max_running``: no task capped but the cap loaded, then the mix."""
    n = QUICK_LIMITED_N if quick else LIMITED_N
    plain = tmp / f"limited-plain-{n}.db"
    harness.fill_queue(plain, n)
    mixed = tmp / f"limited-mixed-{n}.db"
    fill_mixed(mixed, n)
    figures, details = [], {}
    for name, template, label in (
        ("plain", plain, f"drain {n:,} no-op, no cap (same run)"),
        ("loaded", plain, f"drain {n:,} no-op, a capped handler loaded"),
        ("mixed", mixed, f"drain {n:,}, 1 in {CAPPED_EVERY} capped at 2"),
    ):
        outcomes = []
        for k in range(runs):
            with harness.workdir() as run_dir:
                outcomes.append(drain_once(template, n, run_dir, limited=name != "plain"))
            harness.progress(f"drain ({name}) run {k + 1}/{runs}: {outcomes[-1]['rate']:,.0f}/s")
        details[name] = outcomes
        figures.append(harness.figure(SECTION, label, [o["rate"] for o in outcomes], "tasks/s"))
    return figures, details


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
        limited_figures, details["max_running"] = run_limited(quick, runs, tmp)
        figures += limited_figures
    return {"figures": figures, "errors": errors, "runs_detail": details}
