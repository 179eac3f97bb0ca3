"""Profile of the drain: where the scheduler and its workers spend their time, for the next person.

Drains 20,000 no-op tasks (quick: 5,000) with ``bench/profiled_scheduler.py``, which is
``python scheduler/ --workers 2`` with cProfile in the scheduler process and in each forked worker
(real processes, as in the drain section). Writes ``bench/profile-drain-scheduler.prof``,
``bench/profile-drain-workers.prof`` (both workers merged) and ``bench/profile-drain.txt``: the top
40 functions of each by cumulative and by own time. cProfile slows pure-Python code down, so the
drain rate measured here is lower than the drain section's; the shares are what matter.
"""

from __future__ import annotations

import io
import pstats
import sqlite3
import time
from pathlib import Path
from typing import Any

import harness
from drain import POLL, remaining

SECTION = "profile"
N = 20_000
QUICK_N = 5_000
TOP = 40
TEXT = harness.BENCH / "profile-drain.txt"


def top(stats: pstats.Stats, sort: str, title: str) -> str:
    """The ``TOP`` lines of ``stats`` sorted by ``sort``, under a title."""
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats(sort).print_stats(TOP)
    return f"==== {title}, top {TOP} by {sort} ====\n{out.getvalue()}\n"


def run(quick: bool, runs: int) -> dict[str, Any]:
    """One profiled drain (profiles are not averaged)."""
    n = QUICK_N if quick else N
    with harness.workdir() as tmp:
        path = tmp / "party.db"
        harness.fill_queue(path, n)
        profiles = tmp / "profiles"
        profiles.mkdir()
        db = sqlite3.connect(path, timeout=30)
        started = time.perf_counter()
        script = [str(harness.BENCH / "profiled_scheduler.py"), str(profiles)]
        scheduler = harness.start_scheduler(tmp, harness.store_url(path), script=script)
        try:
            while remaining(db)[0]:
                if time.perf_counter() - started > 300 or not scheduler.alive():
                    raise RuntimeError("profiled drain did not finish:\n" + scheduler.tail())
                time.sleep(POLL)
            seconds = time.perf_counter() - started
        finally:
            db.close()
            scheduler.stop(grace=30)
        harness.progress(f"profile: drained {n:,} under cProfile in {seconds:.1f} s")
        parent = profiles / "scheduler.prof"
        workers = sorted(profiles.glob("worker-*.prof"))
        if not parent.exists() or not workers:
            raise RuntimeError(f"profiles missing in {profiles}: {sorted(profiles.iterdir())}")
        scheduler_stats = pstats.Stats(str(parent))
        worker_stats = pstats.Stats(*(str(w) for w in workers))
        scheduler_stats.dump_stats(str(harness.BENCH / "profile-drain-scheduler.prof"))
        worker_stats.dump_stats(str(harness.BENCH / "profile-drain-workers.prof"))
    header = (
        f"Drain of {n:,} no-op tasks by `python scheduler/ --workers 2` under cProfile "
        f"(bench/profiled_scheduler.py): {seconds:.1f} s, {n / seconds:,.0f} tasks/s with the "
        f"profiler on.\nScheduler process: bench/profile-drain-scheduler.prof; the {len(workers)} "
        "workers merged: bench/profile-drain-workers.prof (open with python -m pstats).\n\n"
    )
    text = header + "".join(
        top(stats, sort, title)
        for stats, title in ((worker_stats, "WORKERS"), (scheduler_stats, "SCHEDULER"))
        for sort in ("tottime", "cumulative")
    )
    Path(TEXT).write_text(text)
    harness.progress(f"profile: written {TEXT.relative_to(harness.ROOT)}")
    figure = harness.figure(SECTION, f"drain {n:,} under cProfile", [n / seconds], "tasks/s")
    return {"figures": [figure], "profile": str(TEXT), "workers_profiled": len(workers)}
