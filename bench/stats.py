"""``python bench/stats.py [--tasks N]``: what ``Store.stats`` costs on a big SQLite store, and
what the triggers that keep its counts cost the adds.

Fills a temporary store with N tasks (1,000,000 by default: 90% due, 10% a day ahead, in batches
of 1,000 through ``insert_many``), then times ``stats(now)`` (median and max of 20 calls) and the
full ``GROUP BY`` count it replaced. Then times batched ``insert_many`` of 1,000 fresh tasks and
claim + complete of 64 tasks at a time, with the count triggers and without them (dropped).
Standalone (not a section of ``bench/run.py``): the fill takes about a minute.
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

from party.model import Status, Task, Write, new_id  # noqa: E402
from party.stores.sqlite import SqliteStore  # noqa: E402
from party.timestamps import system_now  # noqa: E402


def tasks(n: int, at: object, created: object) -> list[Task]:
    """``n`` fresh tasks at ``at``."""
    return [
        Task(
            id=new_id(), party=f"P{i % 5}", data={"i": i}, timestamp=at, created=created, run_at=at
        )  # fmt: skip
        for i in range(n)
    ]


def timed(call: object, repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` calls."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    return out


def adds_and_drain(store: SqliteStore, label: str) -> None:
    """Batched inserts of 1,000 and claim + complete of 64, in ms per 1,000 tasks."""
    now = system_now()
    past = now - timedelta(days=365 * 20)  # ahead of every filled task in queue order
    insert = timed(lambda: store.insert_many(tasks(1000, past, now)), 20)

    def drain() -> None:
        claimed = store.claim(64, now, now + timedelta(minutes=1), "bench")
        store.write_many(
            [Write(t.id, {"status": Status.COMPLETED}, lease="bench") for t in claimed]
        )

    drains = timed(drain, 40)
    print(
        f"{label}: insert_many 1,000: median {statistics.median(insert):.1f} ms; "
        f"claim+complete 64: median {statistics.median(drains):.2f} ms "
        f"({statistics.median(drains) / 64 * 1000:.1f} us/task)"
    )


def main() -> int:
    """Fill, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="party-stats-") as tmp:
        store = SqliteStore(Path(tmp) / "party.db", synchronous="normal")
        now = system_now()
        started = time.perf_counter()
        for first in range(0, args.tasks, 1000):
            ahead = first >= args.tasks * 0.9
            store.insert_many(tasks(1000, now + timedelta(days=1) if ahead else now, now))
            store.maintain()
        print(f"filled {args.tasks:,} tasks in {time.perf_counter() - started:.0f} s")
        later = now + timedelta(seconds=1)
        stats = timed(lambda: store.stats(later), 20)
        print(
            f"stats(): median {statistics.median(stats):.2f} ms, max {max(stats):.2f} ms; "
            f"due={store.stats(later)['due']:,}"
        )
        full = timed(
            lambda: store._db.execute(
                "SELECT party, status, COUNT(*) FROM tasks GROUP BY party, status"
            ).fetchall(),
            3,
        )
        print(f"the GROUP BY it replaced: median {statistics.median(full):.0f} ms")
        adds_and_drain(store, "with count triggers")
        for trigger in (
            "tally_insert",
            "tally_insert_ended",
            "tally_delete",
            "tally_update",
            "tally_party",
        ):
            store._db.execute(f"DROP TRIGGER {trigger}")
        adds_and_drain(store, "without triggers  ")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
