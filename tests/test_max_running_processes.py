"""``max_running`` across real schedulers: 2 schedulers x 2 workers never run two ``OneAtATime``
at once, the other handlers' tasks flow meanwhile, and the cap holds across a kill -9 and the
recovery of the killed run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from party.model import Status, owner_of
from party.queue import TaskQueue
from party.registry import discover
from party.stores.sqlite import SqliteStore
from tests.conftest import wait_for

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
LIMITED = ROOT / "tests" / "limited_handlers"


@pytest.fixture
def rig(tmp_path):
    store = SqliteStore(tmp_path / "party.db")
    rig = Rig(tmp_path, TaskQueue(store, discover([str(LIMITED)])))
    yield rig
    rig.close()
    store.close()


class Rig:
    def __init__(self, tmp_path, queue):
        self.tmp_path = tmp_path
        self.queue = queue
        self.log = tmp_path / "runs.log"
        self.procs = []

    def start(self, workers=2, lease=60):
        cmd = [sys.executable, str(ROOT / "scheduler"), "--store",
               f"sqlite:///{self.tmp_path / 'party.db'}", "--tasks", str(LIMITED),
               "--workers", str(workers), "--lease", str(lease), "--poll-interval", "0.2",
               "--log-level", "WARNING"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
        err = open(self.tmp_path / f"scheduler-{len(self.procs)}.err", "w")
        with err:
            proc = subprocess.Popen(cmd, cwd=self.tmp_path, stderr=err, env=env,
                                    start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def add(self, party, n, seconds):
        data = {"seconds": seconds, "log": str(self.log)}
        return self.queue.add([{"party": party, "data": data}] * n)

    def events(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def completed(self, party):
        return self.queue.stats()["parties"].get(party, {}).get("completed", 0)

    def close(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _intervals(events, party, killed_at=None):
    """(start, end) of each run of ``party``; a run killed before its end ends at ``killed_at``."""
    starts, ends = {}, {}
    for e in events:
        if e["party"] == party:
            key = (e["id"], e["attempts"])
            (starts if e["event"] == "start" else ends)[key] = e["at"]
    return sorted((at, ends.get(key, killed_at)) for key, at in starts.items())


def _never_overlap(intervals):
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert end is not None and start >= end, f"two runs at once: {intervals}"


def test_one_at_a_time_across_two_schedulers_while_others_flow(rig):
    limited = rig.add("OneAtATime", 20, 0.2)
    rig.add("Free", 40, 0.05)
    rig.start(workers=2)
    rig.start(workers=2)
    wait_for(lambda: rig.completed("Free") == 40, 60, "the free tasks to finish")
    # The free tasks did not wait for the limited ones: most of those are still to run.
    assert rig.completed("OneAtATime") < 20
    wait_for(lambda: rig.completed("OneAtATime") == 20, 60, "the limited tasks to finish")
    runs = _intervals(rig.events(), "OneAtATime")
    assert len(runs) == 20 and {e["id"] for e in rig.events()} >= {t.id for t in limited}
    _never_overlap(runs)
    assert len({e["pid"] for e in rig.events() if e["party"] == "OneAtATime"}) >= 2


def test_the_cap_holds_across_a_kill_9_and_the_recovery_of_the_run(rig):
    rig.add("OneAtATime", 6, 0.5)
    first = rig.start(workers=2, lease=3)
    second = rig.start(workers=2, lease=3)
    wait_for(lambda: len(rig.events()) >= 3, 30, "a run to be under way")
    # Kill the scheduler (and its workers) whose worker runs a OneAtATime now.
    victim = first
    for task in rig.queue.list(status=Status.RUNNING, limit=10):
        worker_pid = int(owner_of(task.lease).split(".")[2])
        victim = second if os.getpgid(worker_pid) == second.pid else first
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait()
    wait_for(lambda: rig.completed("OneAtATime") == 6, 60, "every task to complete")
    _never_overlap(_intervals(rig.events(), "OneAtATime", killed_at))


def test_a_bad_max_running_stops_the_scheduler_naming_the_handler(tmp_path):
    (tmp_path / "bad.py").write_text(
        "from party import TaskBase\n\n\nclass Bad(TaskBase):\n    max_running = 0\n\n"
        "    def run(self):\n        pass\n"
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{tmp_path / 'p.db'}",
         "--tasks", str(tmp_path / "bad.py"), "--workers", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    assert "handler Bad: max_running must be an integer >= 1" in out.stderr
