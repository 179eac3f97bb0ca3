"""Scale: the claim-and-complete rate with 1,000, 100,000 and 1,000,000 tasks queued, in-process.

The queue is built with fast direct inserts (the store's own ``INSERT`` statement through
``executemany``, 10,000 rows per transaction, into the schema ``SqliteStore`` creates). Each run
then claims 16 tasks at a time with ``TaskQueue.claim(16)`` and records them completed with
``TaskQueue.record`` (every rule in force: lease token, fenced write, attempts), ``TAKE`` tasks
per pass and ``PASSES`` passes per run; after each pass those tasks are put back to ``queued`` off
the clock, so every pass sees the same queue length. The query plan of the due-task claim
(``SqliteStore.explain_claim``) is kept with the figures: it must read the ``tasks_order`` index
in order, with no table scan and no sort.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import harness

SECTION = "scale"
SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 100_000)
TAKE = 960  # tasks claimed and completed per pass (fits the smallest queue)
PASSES = 5  # passes per run
CLAIM = 16
RATIO_TARGET = 1.5
INSERT_BATCH = 10_000

RESET = (
    "UPDATE tasks SET status = 'queued', attempts = 0, lease = NULL, lease_expires = NULL, "
    "started_on = NULL, completed_on = NULL, result = NULL WHERE status = 'completed'"
)


def build(path: Path, n: int) -> float:
    """A store of ``n`` due no-op tasks (1 us apart, all in the past); the seconds it took."""
    from party.model import Task
    from party.stores.sqlite import INSERT, SqliteStore
    from party.stores.sqlite_statements import INSERT_FRESH, _Micros, _task_to_row
    from party.timestamps import from_micros, system_now, to_micros

    SqliteStore(path).close()  # the schema and indexes, exactly as the store creates them
    base = to_micros(system_now() - timedelta(hours=1))
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    micros = _Micros()
    for first in range(0, n, INSERT_BATCH):
        # The rows of the store's own codec: a field added to the tasks never breaks this.
        rows: dict[bool, list[tuple[object, ...]]] = {True: [], False: []}
        for i in range(first, min(n, first + INSERT_BATCH)):
            at = from_micros(base + i)
            task = Task(id=f"{i:024x}", party="BenchNoop", data={}, timestamp=at, created=at,
                        run_at=at)  # fmt: skip
            fresh, row = _task_to_row(task, micros)
            rows[fresh].append(row)
        db.execute("BEGIN")
        db.executemany(INSERT_FRESH, rows[True])
        db.executemany(INSERT, rows[False])
        db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def claim_and_complete(path: Path, take: int, passes: int = 1) -> float:
    """Claim ``take`` tasks 16 at a time and record each batch completed, ``passes`` times (the
    claimed tasks put back to ``queued`` off the clock between passes); tasks per second."""
    from party.model import Outcome
    from party.queue import TaskQueue
    from party.registry import discover
    from party.stores.sqlite import SqliteStore
    from party.timestamps import system_now

    store = SqliteStore(path)
    queue = TaskQueue(store, discover([harness.HANDLERS]))
    reset = sqlite3.connect(path, isolation_level=None, timeout=30)
    total = seconds = 0.0
    try:
        for _ in range(passes):
            done = 0
            started = time.perf_counter()
            while done < take:
                tasks = queue.claim(CLAIM)
                if not tasks:
                    raise RuntimeError(f"queue ran dry after {done} tasks")
                now = system_now()
                queue.record([Outcome(t, ok=True, started_on=now, finished_on=now) for t in tasks])
                done += len(tasks)
            seconds += time.perf_counter() - started
            total += done
            reset.execute(RESET)
    finally:
        store.close()
        reset.close()
    return total / seconds


def query_plan(path: Path) -> list[str]:
    """The plan of the claim's inner select, as SQLite reports it."""
    from party.stores.sqlite import SqliteStore
    from party.timestamps import system_now

    store = SqliteStore(path)
    try:
        return store.explain_claim(system_now())
    finally:
        store.close()


def run(quick: bool, runs: int) -> dict[str, Any]:
    """Each queue length built once, then ``runs`` (at least 3) timed passes of ``TAKE`` tasks."""
    runs = max(runs, 3)  # a pass takes well under a second
    rates: dict[int, list[float]] = {}
    plans: dict[int, list[str]] = {}
    with harness.workdir() as tmp:
        for n in QUICK_SIZES if quick else SIZES:
            path = tmp / f"scale-{n}.db"
            seconds = build(path, n)
            harness.progress(f"scale: built {n:,} queued tasks in {seconds:.1f} s")
            claim_and_complete(path, CLAIM * 4)  # warm the page cache off the clock
            rates[n] = [claim_and_complete(path, TAKE, PASSES) for _ in range(runs)]
            plans[n] = query_plan(path)
            harness.progress(
                f"scale n={n:,}: {', '.join(f'{r:,.0f}' for r in rates[n])} tasks/s; "
                f"plan: {' | '.join(plans[n])}"
            )
            path.unlink()
    figures = []
    smallest = min(rates)
    for n, values in rates.items():
        figures.append(harness.figure(SECTION, f"claim+complete, {n:,} queued", values, "tasks/s"))
    largest = max(rates)
    base = sorted(rates[smallest])[len(rates[smallest]) // 2]
    slowdowns = [base / r for r in rates[largest]]
    figures.append(
        harness.figure(
            SECTION,
            f"slowdown {largest:,} vs {smallest:,} queued",
            slowdowns,
            "x",
            target=RATIO_TARGET if largest >= 1_000_000 else None,
            higher_is_better=False,
        )  # fmt: skip
    )
    errors = []
    for n, plan in plans.items():
        text = " ".join(plan)
        if "tasks_order" not in text or "TEMP B-TREE" in text:
            errors.append(f"claim plan at {n:,} does not read the tasks_order index in order")
    return {"figures": figures, "errors": errors, "query_plans": plans}
