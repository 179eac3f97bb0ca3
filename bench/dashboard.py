"""``python bench/dashboard.py [--tasks N]``: what each dashboard page's store reads cost on a big
SQLite store (1,000,000 tasks by default: 70% queued, 25% completed, 5% failed, five handlers).

Times, median and max of 10 calls each, the reads behind ``/ui`` pages (``party.views``): a page
of 50 by status, by status and handler, a page deep in the list (by cursor), the stats, the live
schedulers, the run totals, and the text search that reads at most 10,000 tasks. Standalone (not
a section of ``bench/run.py``): the fill takes a minute or two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from party.model import Status, Task, new_id  # noqa: E402
from party.stores.sqlite import SqliteStore  # noqa: E402
from party.timestamps import system_now  # noqa: E402
from party.views import Views  # noqa: E402

SHARES = ((Status.QUEUED, 0.70), (Status.COMPLETED, 0.25), (Status.FAILED, 0.05))


def fill(store: SqliteStore, n: int) -> None:
    now = system_now()
    made = 0
    for status, share in SHARES:
        count = int(n * share)
        while count > 0:
            batch = min(count, 1000)
            at = now - timedelta(seconds=made)
            store.insert_many([
                Task(id=new_id(), party=f"P{(made + i) % 5}", data={"i": made + i}, timestamp=at,
                     created=at, run_at=at, status=status, attempts=1 if status != "queued" else 0,
                     completed_on=at if status != "queued" else None)
                for i in range(batch)
            ])  # fmt: skip
            made += batch
            count -= batch


def timed(label: str, call: object, repeat: int = 10) -> None:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    print(f"{label:<44} median {statistics.median(times):8.2f} ms   max {max(times):8.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "dash.db")
        started = time.perf_counter()
        fill(store, args.tasks)
        print(f"filled {args.tasks:,} tasks in {time.perf_counter() - started:.0f} s")
        views = Views(store)
        deep = views.list(status="queued", limit=1000)[-1].order_key
        timed("tasks page: status=queued", lambda: views.list(status="queued", limit=50))
        timed("tasks page: status=completed", lambda: views.list(status="completed", limit=50))
        timed("tasks page: status=failed (overview)", lambda: views.list(status="failed", limit=10))
        timed("tasks page: status=queued party=P3",
              lambda: views.list(status="queued", party="P3", limit=50))  # fmt: skip
        timed("tasks page: next page by cursor",
              lambda: views.list(status="queued", limit=50, after=deep))  # fmt: skip
        timed("stats (overview, counts table)", views.stats)
        timed("live schedulers", views.schedulers)
        timed("run totals (all heartbeats)", views.run_totals)
        timed("text search, 10,000 scanned, no match",
              lambda: views.search("no-such-text", status="completed"), repeat=3)  # fmt: skip
        timed("text search, one store call of 1,000",
              lambda: views.search("no-such-text", status="completed", scan=1000))  # fmt: skip
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
