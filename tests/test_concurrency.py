"""``--concurrency``: real ``python scheduler/`` processes running many runs at once per worker.

Async handlers run on each worker's event loop, plain ones in its threads; every rule still holds
per run (timeouts, graceful stop). Bounds on time are loose: they prove runs overlap, not speed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from party.model import Status
from party.queue import TaskQueue
from party.registry import discover
from party.stores.sqlite import SqliteStore

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "tests" / "handlers" / "concurrency_handlers.py"


class Scheduler:
    """One ``python scheduler/`` on a temporary store, with the concurrency handlers."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.db = tmp_path / "party.db"
        self.log = tmp_path / "runs.log"
        self.hooks = tmp_path / "hooks.log"
        self.store = SqliteStore(self.db)
        self.queue = TaskQueue(self.store, discover([str(HANDLERS)]))
        self.proc = None

    def start(self, *, workers=1, concurrency=8, grace=10, env=None):
        self.err = self.tmp_path / "scheduler.err"
        cmd = [
            sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{self.db}",
            "--tasks", str(HANDLERS), "--workers", str(workers), "--concurrency", str(concurrency),
            "--lease", "30", "--grace", str(grace), "--poll-interval", "0.5",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")} | {
            "PARTY_TEST_HOOK_LOG": str(self.hooks),
            **(env or {}),
        }
        with open(self.err, "w") as stderr:
            self.proc = subprocess.Popen(cmd, cwd=self.tmp_path, stderr=stderr, env=env)
        return self.proc

    def add(self, party, n, **data):
        return self.queue.add(
            [{"party": party, "data": {"n": i, "log": str(self.log), **data}} for i in range(n)]
        )

    def runs(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stderr(self):
        return self.err.read_text()

    def statuses(self, tasks):
        return [self.queue.get(t.id).status for t in tasks]

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.store.close()


@pytest.fixture
def sched(tmp_path):
    s = Scheduler(tmp_path)
    yield s
    s.close()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("party", ["AsyncNap", "ThreadNap"])
def test_200_runs_of_a_fifth_of_a_second_overlap_in_one_worker(sched, party):
    tasks = sched.add(party, 200, seconds=0.2)
    sched.start(workers=1, concurrency=200)
    # One after the other they would take 40 s: a few seconds proves they overlap.
    wait_until(lambda: sched.queue.stats()["statuses"]["completed"] == 200, 15, "200 runs")
    stored = [sched.queue.get(t.id) for t in tasks]
    assert {t.attempts for t in stored} == {1}
    assert len({t.result["pid"] for t in stored}) == 1
    assert all(t.result["hooked"] for t in stored)  # the start hook ran before the first run
    if party == "AsyncNap":  # ...on the loop the async handlers run on
        assert all(t.result["same_loop"] for t in stored)
    else:
        assert len({r["thread"] for r in sched.runs()}) > 1
    sched.proc.send_signal(signal.SIGTERM)
    assert sched.proc.wait(15) == 0
    hooks = sched.hooks.read_text().split()
    assert hooks == ["start", hooks[1], "stop", hooks[1]]  # once each, in the one worker


@pytest.mark.parametrize("party", ["AsyncHangs", "ThreadHangs"])
def test_a_timeout_fails_only_the_run_that_overran(sched, party):
    (hangs,) = sched.add(party, 1, seconds=1.5)  # a thread's run ends while the others run
    others = sched.add("ThreadNap", 3, seconds=2.0) + sched.add("AsyncNap", 3, seconds=2.0)
    sched.start(workers=1, concurrency=8)
    wait_until(lambda: sched.queue.get(hangs.id).last_error is not None, 10, "the timeout")
    error = sched.queue.get(hangs.id).last_error
    assert error["type"] == "Timeout" and error["message"] == "timed out after 1 s"
    wait_until(lambda: set(sched.statuses([hangs, *others])) == {Status.COMPLETED}, 15, "every run")
    assert sched.queue.get(hangs.id).attempts == 2  # the overrun, then its retry
    assert [sched.queue.get(t.id).attempts for t in others] == [1] * 6  # no extra attempt
    if party == "ThreadHangs":  # the worker retired once its other runs had ended
        assert "which cannot be stopped" in sched.stderr()
        wait_until(lambda: "retired" in sched.stderr(), 10, "the retirement")


def test_a_thread_past_its_timeout_keeps_its_task_until_its_worker_retires(sched):
    (hangs,) = sched.add("ThreadHangs", 1, seconds=6)  # a thread nothing can stop
    others = sched.add("ThreadNap", 2, seconds=3.0)
    sched.start(workers=1, concurrency=4)
    wait_until(lambda: "which cannot be stopped" in sched.stderr(), 10, "the overrun")
    held = sched.queue.get(hangs.id)  # still leased: no retry can start while the thread lives
    assert (held.status, held.attempts, held.last_error) == (Status.RUNNING, 1, None)
    wait_until(lambda: set(sched.statuses([hangs, *others])) == {Status.COMPLETED}, 20, "every run")
    assert sched.queue.get(hangs.id).attempts == 2
    runs = sched.runs()
    retry = next(r for r in runs if r["id"] == hangs.id and r["attempts"] == 2)
    naps = [r for r in runs if r["party"] == "ThreadNap"]
    assert retry["at"] > max(r["at"] for r in naps)  # once the worker had retired
    assert retry["pid"] != next(r for r in runs if r["id"] == hangs.id)["pid"]


def test_sigterm_lets_concurrent_runs_finish_and_hands_back_the_rest(sched):
    running = sched.add("ThreadNap", 3, seconds=1.5) + sched.add("AsyncNap", 3, seconds=1.5)
    waiting = sched.add("ThreadNap", 10, seconds=1.5)
    sched.start(workers=1, concurrency=6, grace=10)
    wait_until(lambda: len(sched.runs()) == 6, 10, "six runs to start")
    started = {r["id"] for r in sched.runs()}
    sched.proc.send_signal(signal.SIGTERM)
    assert sched.proc.wait(15) == 0
    for task in running + waiting:
        stored = sched.queue.get(task.id)
        if task.id in started:
            assert (stored.status, stored.attempts) == (Status.COMPLETED, 1)
        else:
            assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)
    assert len(started) == 6


def test_an_async_handler_that_blocks_the_loop_is_reported(sched):
    (task,) = sched.add("BlocksLoop", 1, seconds=1.0)
    sched.start(workers=1, concurrency=4)
    wait_until(lambda: sched.queue.get(task.id).status == Status.COMPLETED, 10, "the run")
    text = sched.stderr()
    assert "the event loop is blocked: async handler BlocksLoop" in text
    assert task.id in text and "time.sleep" in text


def test_a_failing_start_hook_stops_the_worker_and_the_pool_restarts_it_with_backoff(sched):
    fail = sched.tmp_path / "fail"
    fail.write_text("")
    (task,) = sched.add("AsyncNap", 1, seconds=0)
    sched.start(workers=1, concurrency=4, env={"PARTY_TEST_HOOK_FAIL": str(fail)})
    wait_until(lambda: sched.stderr().count("a worker start hook failed") >= 2, 10, "restarts")
    assert "the test's start hook fails on purpose" in sched.stderr()
    assert "starting a new one in" in sched.stderr()
    assert sched.queue.get(task.id).attempts == 0  # no run started without its hook
    fail.unlink()
    wait_until(lambda: sched.queue.get(task.id).status == Status.COMPLETED, 15, "the run")
