"""Four processes draining one SQLite file at once: every task is claimed exactly once."""

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent

DRAINER = textwrap.dedent(
    """
    import json, sys
    from party.model import Outcome
    from party.queue import TaskQueue
    from party.registry import discover
    from party.stores.sqlite import SqliteStore
    from party.timestamps import system_now

    queue = TaskQueue(SqliteStore(sys.argv[1]), discover([sys.argv[2]]))
    seen = []
    idle = 0
    while idle < 3:
        claimed = queue.claim(8)
        if not claimed:
            idle += 1
            continue
        idle = 0
        now = system_now()
        outcomes = [Outcome(t, ok=True, started_on=now, finished_on=now) for t in claimed]
        assert all(s == "completed" for s in queue.record(outcomes))
        seen.extend(t.id for t in claimed)
    print(json.dumps(seen))
    """
)


@pytest.mark.processes
def test_four_processes_claim_each_task_exactly_once(tmp_path, registry):
    db = tmp_path / "race.db"
    queue = TaskQueue(SqliteStore(db), registry)
    ids = set()
    for _ in range(5):
        ids.update(t.id for t in queue.add([{"party": "Noop"}] * 1000))
    handlers = str(ROOT / "tests" / "handlers")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRAINER, str(db), handlers],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    claimed = Counter()
    per_process = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        got = json.loads(out)
        per_process.append(len(got))
        claimed.update(got)
    assert set(claimed) == ids
    assert max(claimed.values()) == 1
    assert sum(1 for n in per_process if n) >= 2, f"no race happened: {per_process}"
    assert queue.stats()["statuses"]["completed"] == 5000
