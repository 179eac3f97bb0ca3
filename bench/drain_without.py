"""``python bench/drain_without.py [CHECKOUT] [--drop NAME,...] [--n N] [--runs R]``: what a schema
object costs the drain.

Fills a fresh SQLite store (on disk, under the temporary directory) with N no-op tasks using the
code of CHECKOUT (default: this one), drops the named triggers or indexes (``tally_update``,
``tasks_ended``, ...; ``triggers`` drops every trigger on ``tasks``), then times
``python scheduler/ --workers 2`` of that checkout draining it: tasks/s including the start, after
the first task, and the CPU per task of the scheduler and its workers. Run it for two checkouts,
or with and without ``--drop``, alternating, and compare medians (see docs/performance.md, "The
drain since session 2"). A scheduler on a store missing an index it uses may log a warning (the
retention pass without ``tasks_ended``); the drain itself does not need them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def drain_once(checkout: Path, drop: list[str], n: int) -> tuple[float, float, float]:
    """One fill, drop and drain in a child interpreter of ``checkout``: (incl. start, after the
    first task, CPU us per task)."""
    tmp = Path(tempfile.mkdtemp(prefix="party-drain-without-"))
    try:
        path = tmp / "party.db"
        fill = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "from party.queue import TaskQueue\nfrom party.registry import discover\n"
            "from party.stores.sqlite import SqliteStore\n"
            "store = SqliteStore(sys.argv[2]); q = TaskQueue(store, discover([sys.argv[3]]))\n"
            "n = int(sys.argv[4])\n"
            "for i in range(0, n, 1000):\n"
            "    batch = range(i, min(i + 1000, n))\n"
            "    q.add([{'party': 'BenchNoop', 'data': {'i': j}} for j in batch])\n"
            "store.close()\n"
        )
        python = str(checkout / ".venv" / "bin" / "python")
        if not os.path.exists(python):
            python = sys.executable
        handlers = str(HERE / "handlers.py")
        subprocess.run([python, "-c", fill, str(checkout), str(path), handlers, str(n)], check=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        for name in drop:
            if name == "triggers":
                for (trigger,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks'"
                ).fetchall():
                    db.execute(f'DROP TRIGGER "{trigger}"')
            else:
                found = "SELECT type FROM sqlite_master WHERE name = ?"
                kind = db.execute(found, (name,)).fetchone()
                if kind is None:
                    raise SystemExit(f"no trigger or index named {name!r} in this store")
                db.execute(f'DROP {kind[0].upper()} "{name}"')
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        left = "SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
        before = os.times()
        started = time.perf_counter()
        scheduler = subprocess.Popen(
            [python, "scheduler/", "--store", f"sqlite:///{path}", "--tasks", handlers,
             "--workers", "2", "--log-level", "ERROR"],
            cwd=checkout,
        )  # fmt: skip
        first = None
        try:
            while True:
                remaining = db.execute(left).fetchone()[0]
                now = time.perf_counter()
                if first is None and remaining < n:
                    first = now
                if remaining == 0:
                    break
                if now - started > 300 or scheduler.poll() is not None:
                    raise SystemExit("the drain did not finish")
                time.sleep(0.005)
        finally:
            scheduler.terminate()
            scheduler.wait()
            db.close()
        after = os.times()
        cpu = (after.children_user + after.children_system) - (
            before.children_user + before.children_system
        )
        return n / (now - started), n / (now - (first or started)), cpu / n * 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    """Parse the arguments, drain ``--runs`` times, print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("checkout", nargs="?", default=str(HERE.parent))
    parser.add_argument("--drop", default="", help="triggers or indexes to drop, comma-separated")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    checkout = Path(args.checkout).resolve()
    drop = [name for name in args.drop.split(",") if name]
    runs = []
    for _ in range(args.runs):
        runs.append(drain_once(checkout, drop, args.n))
        print(f"{runs[-1][0]:9,.0f} tasks/s incl. start {runs[-1][1]:9,.0f} after the first "
              f"{runs[-1][2]:6.1f} us CPU per task", flush=True)  # fmt: skip
    medians = [statistics.median(run[i] for run in runs) for i in range(3)]
    print(
        f"{checkout} without {drop or 'nothing'}: medians {medians[0]:,.0f} tasks/s "
        f"incl. start, {medians[1]:,.0f} after the first, {medians[2]:.1f} us CPU per task"
    )


if __name__ == "__main__":
    main()
