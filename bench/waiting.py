"""Waiting: how fast ``python scheduler/`` empties a queue of tasks that each wait 20 ms on I/O.

The peers' W6: the queue is filled beforehand with tasks that sleep 20 ms (``BenchWait``, run in
the workers' threads) or await 20 ms (``BenchWaitAsync``, run on the workers' event loops); the
clock starts just before the scheduler starts (worker start included) and stops at the first look
at the store that finds nothing queued or running. The resident memory (VmRSS) of the scheduler
and its workers is summed at that moment, as the peer bench does. Set-ups: 2 workers with
``--concurrency 64`` (threads) and ``--concurrency 256`` (async), beside 2 workers that run one
task at a time (the default), on a smaller queue since it drains 50 tasks/s per worker.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import harness

SECTION = "waiting"
N = 5_000
QUICK_N = 1_000
#: (name, handler, --concurrency, tasks as a share of N)
SETUPS = (
    ("threads, 2 workers x 64", "BenchWait", 64, 1.0),
    ("async, 2 workers x 256", "BenchWaitAsync", 256, 1.0),
    ("one at a time, 2 workers", "BenchWait", 1, 0.1),
)
#: Party's better figure against Huey's thread consumer in the same run (peer bench, W6).
TARGET = 2_100.0
POLL = 0.02
LIMIT = 180.0


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB."""
    total = 0
    for p in harness.process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024.0


def drain_once(template: Path, n: int, concurrency: int, tmp: Path) -> dict[str, Any]:
    """Copy the filled store, start the scheduler, time it until nothing is left."""
    path = tmp / "party.db"
    harness.copy_store(template, path)
    db = sqlite3.connect(path, timeout=30)
    started = time.perf_counter()
    scheduler = harness.start_scheduler(
        tmp, harness.store_url(path), extra=["--concurrency", str(concurrency)]
    )
    try:
        while True:
            live = db.execute(
                "SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
            ).fetchone()[0]
            now = time.perf_counter()
            if live == 0:
                rss = rss_mib(scheduler.pid)
                break
            if now - started > LIMIT or not scheduler.alive():
                raise RuntimeError(
                    f"waiting drain of {n} stopped with {live} left after {now - started:.0f} s:\n"
                    + scheduler.tail()
                )
            time.sleep(POLL)
    finally:
        scheduler.stop()
        db.close()
    seconds = now - started
    return {"n": n, "seconds": seconds, "rate": n / seconds, "rss_mib": rss}


def run(quick: bool, runs: int) -> dict[str, Any]:
    """Each set-up ``runs`` times on a copy of one filled store."""
    figures = []
    details: dict[str, list[dict[str, Any]]] = {}
    with harness.workdir() as tmp:
        for name, party, concurrency, share in SETUPS:
            n = max(100, int((QUICK_N if quick else N) * share))
            template = tmp / f"filled-{party}-{n}.db"
            if not template.exists():
                harness.fill_queue(template, n, party=party)
            outcomes = []
            for k in range(runs):
                with harness.workdir() as run_dir:
                    outcome = drain_once(template, n, concurrency, run_dir)
                outcomes.append(outcome)
                harness.progress(
                    f"waiting {name} run {k + 1}/{runs} n={n:,}: {outcome['rate']:,.0f} tasks/s, "
                    f"{outcome['rss_mib']:.0f} MiB"
                )
            details[name] = outcomes
            target = TARGET if concurrency > 1 and not quick else None
            figures.append(harness.figure(
                SECTION, f"{n:,} x 20 ms, {name}", [o["rate"] for o in outcomes], "tasks/s",
                target=target,
            ))  # fmt: skip
            figures.append(harness.figure(
                SECTION, f"{name}: scheduler + workers RSS", [o["rss_mib"] for o in outcomes],
                "MiB", target=100.0 if concurrency > 1 else None, higher_is_better=False,
            ))  # fmt: skip
    return {"figures": figures, "errors": [], "runs_detail": details}
