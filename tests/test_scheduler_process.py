"""Real ``python scheduler/`` processes on a temporary SQLite file: order, retries, recurrence,
timing, crashes, signals and several schedulers sharing one store.

Tasks are added straight through ``TaskQueue`` on the same file; the handlers
(``tests/handlers/process_handlers.py``) append one JSON line per run to a log file.
"""

import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from party.model import Status, Task
from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "tests" / "handlers" / "process_handlers.py"


class Schedulers:
    """Starts scheduler processes on one store and cleans up whatever is left of them."""

    def __init__(self, tmp_path, registry):
        self.tmp_path = tmp_path
        self.db = tmp_path / "party.db"
        self.url = f"sqlite:///{self.db}"
        self.log = tmp_path / "runs.log"
        self.store = SqliteStore(self.db)
        self.queue = TaskQueue(self.store, registry)
        self.procs = []

    def start(
        self, *flags, workers=1, lease=60, grace=10, poll=0.5, level="INFO", env=None, group=False
    ):
        """A scheduler process; with ``group``, in a process group of its own (to kill it whole
        with ``os.killpg``, as a crash of a container or a terminal would)."""
        stderr = open(self.tmp_path / f"scheduler-{len(self.procs)}.err", "w")
        cmd = [
            sys.executable, str(ROOT / "scheduler"), "--store", self.url, "--tasks", str(HANDLERS),
            "--workers", str(workers), "--lease", str(lease), "--grace", str(grace),
            "--poll-interval", str(poll), "--log-level", level, *flags,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")} | (env or {})
        with stderr:
            proc = subprocess.Popen(
                cmd, cwd=self.tmp_path, stderr=stderr, env=env, start_new_session=group
            )
        proc.stderr_path = stderr.name
        self.procs.append(proc)
        return proc

    def add(self, *items):
        return self.queue.add(items)

    def runs(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def count(self, status):
        return self.queue.stats()["statuses"][status.value]

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its workers, if it had a group of its own
            except (ProcessLookupError, PermissionError):
                pass
        self.store.close()


@pytest.fixture
def sched(tmp_path, registry):
    s = Schedulers(tmp_path, registry)
    yield s
    s.close()


def wait_until(predicate, timeout, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stderr_of(proc):
    return Path(proc.stderr_path).read_text()


def test_one_worker_runs_due_tasks_in_timestamp_attempts_created_order(sched):
    now = system_now()
    log = {"log": str(sched.log)}
    # Inserted in a scrambled order; two share a timestamp but one already failed once.
    tasks = []
    for n, (secs, attempts, created) in enumerate(
        [(-5, 0, 3), (-9, 0, 1), (-5, 1, 1), (-5, 0, 2), (-7, 2, 9), (-1, 0, 0)]
    ):
        ts = now + timedelta(seconds=secs)
        created_at = now - timedelta(minutes=10 - created)
        tasks.append(
            Task(
                id=f"{n:024x}",
                party="Note",
                data={"n": n, **log},
                timestamp=ts,
                created=created_at,
                run_at=ts,
                attempts=attempts,
            )  # fmt: skip
        )
    sched.store.insert_many(tasks)
    sched.start(workers=1)
    wait_until(lambda: len(sched.runs()) == len(tasks), 15, "all runs")
    expected = [t.data["n"] for t in sorted(tasks, key=lambda t: t.order_key)]
    assert [run["n"] for run in sched.runs()] == expected


def test_failing_handler_ends_failed_after_exactly_six_attempts(sched):
    (task,) = sched.add({"party": "AlwaysFails", "data": {"log": str(sched.log)}})
    proc = sched.start(workers=2)
    wait_until(lambda: sched.queue.get(task.id).status == Status.FAILED, 15, "failed")
    time.sleep(0.3)  # a seventh run, if there were one, would show now
    assert [run["attempts"] for run in sched.runs()] == [1, 2, 3, 4, 5, 6]
    stored = sched.queue.get(task.id)
    assert stored.attempts == 6 and stored.last_error["type"] == "RuntimeError"
    assert "Traceback" in stderr_of(proc) and "fails on attempt 6" in stderr_of(proc)


def test_recurring_task_runs_on_its_cadence_with_last_run_on_set(sched):
    start = system_now()
    (task,) = sched.add(
        {"party": "Ticker", "data": {"minutes": 0.5 / 60, "runs": 3, "log": str(sched.log)}}
    )
    sched.start(poll=5)
    wait_until(lambda: sched.queue.get(task.id).status == Status.COMPLETED, 15, "three runs")
    runs = sched.runs()
    assert len(runs) == 3 and {r["id"] for r in runs} == {task.id}
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in runs]
    # A fixed cadence: each slot lies a whole number of periods after the last, never drifting
    # (a run that started late on a loaded machine skips the slots it missed: 0.5 s or 1.0 s).
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert all(gap > 0 and (gap / 0.5).is_integer() for gap in gaps), gaps
    assert runs[0]["last_run_on"] is None
    for before, after in itertools.pairwise(runs):
        last = datetime.fromisoformat(after["last_run_on"])
        assert start <= last <= datetime.fromisoformat(before["at"])
        assert after["attempts"] == 1


def test_deleted_task_never_runs(sched):
    soon = system_now() + timedelta(seconds=0.5)
    doomed, marker = sched.add(
        {"party": "Note", "data": {"n": "doomed", "log": str(sched.log)}, "timestamp": soon},
        {"party": "Note", "data": {"n": "marker", "log": str(sched.log)}, "timestamp": soon},
    )
    sched.queue.delete(doomed.id)
    sched.start(workers=2)
    wait_until(lambda: sched.runs(), 10, "the marker run")
    time.sleep(0.3)
    assert [run["n"] for run in sched.runs()] == ["marker"]
    assert sched.queue.get(doomed.id).status == Status.DELETED


def test_task_scheduled_two_seconds_ahead_starts_on_time_and_never_early(sched):
    proc = sched.start(poll=5)
    wait_until(lambda: "scheduler started" in stderr_of(proc), 10, "start-up")
    when = system_now() + timedelta(seconds=2)
    sched.add({"party": "Note", "data": {"log": str(sched.log)}, "timestamp": when})
    wait_until(lambda: sched.runs(), 10, "the run")
    started = datetime.fromisoformat(sched.runs()[0]["at"])
    assert when <= started <= when + timedelta(seconds=0.5)


def test_worker_calling_os_exit_is_replaced_and_its_task_retried(sched):
    (task,) = sched.add({"party": "DiesFirst", "data": {"log": str(sched.log)}})
    proc = sched.start(workers=2)
    wait_until(lambda: sched.queue.get(task.id).status == Status.COMPLETED, 15, "the retry")
    assert [run["attempts"] for run in sched.runs()] == [1, 2]
    assert sched.queue.get(task.id).result == "survived"
    wait_until(
        lambda: "exited with code 7; starting a new one" in stderr_of(proc), 10, "the log line"
    )
    assert proc.poll() is None


def test_run_past_its_timeout_is_killed_and_retried(sched):
    (task,) = sched.add({"party": "Hangs", "data": {"log": str(sched.log)}})
    proc = sched.start()
    wait_until(lambda: sched.queue.get(task.id).status == Status.COMPLETED, 15, "the retry")
    assert [run["attempts"] for run in sched.runs()] == [1, 2]
    assert "timed out after 1 s" in stderr_of(proc)


def test_sigterm_during_long_tasks_exits_0_within_grace_and_requeues_them(sched):
    tasks = sched.add(
        *[{"party": "Sleepy", "data": {"seconds": 60, "log": str(sched.log)}} for _ in range(3)]
    )
    proc = sched.start(workers=2, grace=1)
    wait_until(lambda: len(sched.runs()) == 2, 10, "two running tasks")
    os.kill(proc.pid, signal.SIGTERM)
    start = time.monotonic()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - start < 4
    stored = [sched.queue.get(t.id) for t in tasks]
    assert [(t.status, t.attempts, t.lease) for t in stored] == [(Status.QUEUED, 0, None)] * 3
    assert "handed back" in stderr_of(proc)


def test_second_signal_exits_at_once(sched):
    (task,) = sched.add({"party": "Sleepy", "data": {"seconds": 60, "log": str(sched.log)}})
    proc = sched.start(grace=60)
    wait_until(lambda: sched.runs(), 10, "the running task")
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    assert proc.poll() is None  # still waiting out the grace period
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=3) == 1
    assert sched.queue.get(task.id).status == Status.RUNNING  # its lease will recover it


def test_kill_9_mid_drain_then_restart_completes_every_task(sched):
    # 3 ms each: the drain takes about 1.5 s, so the kill lands mid-drain even on a slow machine
    # (no-op tasks could all be done between two looks at the log).
    tasks = sched.add(
        *[{"party": "Sleepy", "data": {"seconds": 0.003, "log": str(sched.log)}}] * 1000
    )
    first = sched.start(workers=2, lease=2, level="WARNING")
    wait_until(lambda: len(sched.runs()) >= 200, 20, "200 runs")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert sched.count(Status.COMPLETED) < 1000
    sched.start(workers=2, lease=2, level="WARNING")
    wait_until(lambda: sched.count(Status.COMPLETED) == 1000, 30, "every task completed")
    assert {run["id"] for run in sched.runs()} == {t.id for t in tasks}


def test_three_schedulers_draining_3000_tasks_run_each_exactly_once(sched):
    tasks = sched.add(
        *[{"party": "Note", "data": {"n": i, "log": str(sched.log)}} for i in range(3000)]
    )
    procs = [sched.start(workers=1, level="WARNING") for _ in range(3)]
    wait_until(lambda: sched.count(Status.COMPLETED) == 3000, 60, "every task completed")
    runs = sched.runs()
    assert len(runs) == 3000 and {run["id"] for run in runs} == {t.id for t in tasks}
    assert len({run["pid"] for run in runs}) >= 2  # the schedulers really shared the work
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=10) for proc in procs] == [0, 0, 0]


def test_python_dash_m_party_scheduler_is_the_same_entry_point(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "party.scheduler", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "--poll-interval" in out.stdout and "--grace" in out.stdout


# -- wake-ups (issue 8): loose bounds that prove a behaviour, not figures of speed ------------


def wait_listening(sched, count=1, tmpdir=None):
    """Until ``count`` schedulers listen on the store's wake-up channel, then past a first pass."""
    from party.stores.wakeup import channel_dir

    folder = channel_dir("sqlite:" + os.path.realpath(sched.db))
    if tmpdir is not None:
        folder = Path(tmpdir) / folder.parent.name / folder.name
    wait_until(lambda: len(list(folder.glob("*.sock"))) >= count, 15, "the wake-up socket")
    time.sleep(0.3)  # past the first pass, into the long sleep


def test_task_added_for_now_runs_at_once_while_the_scheduler_sleeps_towards_a_later_one(sched):
    sched.add(
        {"party": "Note", "data": {"n": "later"}, "timestamp": system_now() + timedelta(hours=1)}
    )
    sched.start(poll=30)
    wait_listening(sched)
    added = system_now()
    sched.add({"party": "Note", "data": {"n": "now", "log": str(sched.log)}})
    wait_until(lambda: sched.runs(), 5, "the woken run (poll interval is 30 s)")
    assert datetime.fromisoformat(sched.runs()[0]["at"]) - added < timedelta(seconds=3)
    assert sched.count(Status.QUEUED) == 1  # the later task still waits for its hour


def test_without_the_wake_up_channel_polling_still_runs_the_task(sched):
    # A folder of its own: the workers listen where no sender of this store writes.
    other_tmp = Path(tempfile.mkdtemp(prefix="pw-", dir="/tmp"))
    # The scheduler listens in another temporary folder: no notification can reach it.
    sched.start(poll=2, env={"TMPDIR": str(other_tmp)})
    wait_listening(sched, tmpdir=other_tmp)
    sched.add({"party": "Note", "data": {"log": str(sched.log)}})
    try:
        wait_until(lambda: sched.count(Status.COMPLETED) == 1, 6, "the run found by polling")
        assert len(sched.runs()) == 1
    finally:
        sched.close()
        shutil.rmtree(other_tmp, ignore_errors=True)


def test_two_idle_schedulers_woken_together_run_a_new_task_once(sched):
    sched.start(poll=30)
    sched.start(poll=30)
    wait_listening(sched, count=2)
    (task,) = sched.add({"party": "Note", "data": {"log": str(sched.log)}})
    wait_until(lambda: sched.count(Status.COMPLETED) == 1, 5, "the woken run")
    time.sleep(0.3)
    assert [run["id"] for run in sched.runs()] == [task.id]


def stop_outside_the_write_lock(proc, db):
    """SIGSTOP ``proc`` at a moment it does not hold the SQLite writers' lock.

    A process stopped inside a write stalls every writer of the file until it resumes (SQLite has
    one writer at a time; the server then answers 503): no run is doubled, but nothing finishes
    either, which is not the case this test is about.
    """
    deadline = time.monotonic() + 10
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        with open(f"{db}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                pass  # a writer holds it now: the stopped scheduler, or one of the workers
        os.kill(proc.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "never found the writers' lock free"
        time.sleep(0.02)


def test_a_stalled_scheduler_never_lets_two_workers_run_one_task(sched):
    # Runs longer than their lease (3 s, renewed every second), as in the report.
    tasks = sched.add(
        *[{"party": "Span", "data": {"seconds": 5, "log": str(sched.log)}} for _ in range(2)]
    )
    first = sched.start(workers=2, lease=3, poll=0.2)
    starts = lambda: [r for r in sched.runs() if r.get("edge") == "start"]  # noqa: E731
    wait_until(lambda: len(starts()) == 2, 10, "both runs to start")
    stop_outside_the_write_lock(first, sched.db)  # its own process only: its workers go on
    try:
        sched.start(workers=2, lease=3, poll=0.2)
        wait_until(lambda: sched.count(Status.COMPLETED) == 2, 40, "both tasks to complete")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # Leases outlived the 3 s lease because the workers renewed them: nobody ran a task twice.
    assert sorted(r["id"] for r in starts()) == sorted(t.id for t in tasks)
    assert {(r["id"], r["attempts"]) for r in sched.runs()} == {(t.id, 1) for t in tasks}


def kill_group(proc):
    os.killpg(proc.pid, signal.SIGKILL)  # the scheduler and every worker at once
    proc.wait()


def test_a_restarted_scheduler_takes_back_its_dead_predecessors_tasks_at_once(sched):
    tasks = sched.add(
        *[{"party": "Span", "data": {"seconds": 30, "log": str(sched.log)}} for _ in range(2)]
    )
    first = sched.start(workers=2, lease=60, group=True)
    wait_until(lambda: len(sched.runs()) == 2, 10, "both runs to start")
    kill_group(first)
    restarted = time.monotonic()
    sched.start(workers=2, lease=60, group=True)
    # Both ran again within seconds of the restart, a lease (60 s) before they would expire.
    wait_until(lambda: len(sched.runs()) == 4, 10, "both tasks to run again")
    assert time.monotonic() - restarted < 10
    again = [r for r in sched.runs()[2:]]
    assert sorted(r["id"] for r in again) == sorted(t.id for t in tasks)
    assert {r["attempts"] for r in again} == {2}


def test_when_one_of_two_schedulers_dies_the_other_takes_its_tasks_back(sched):
    tasks = sched.add(
        *[{"party": "Span", "data": {"seconds": 30, "log": str(sched.log)}} for _ in range(2)]
    )
    doomed = sched.start(workers=2, lease=60, group=True)
    wait_until(lambda: len(sched.runs()) == 2, 10, "both runs to start")
    sched.start(workers=2, lease=60, group=True)
    kill_group(doomed)
    wait_until(lambda: len(sched.runs()) == 4, 15, "the survivor to run both again")
    assert {(r["id"], r["attempts"]) for r in sched.runs()[2:]} == {(t.id, 2) for t in tasks}


def catches_sigterm(pid):
    """Whether process ``pid`` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def test_a_stop_signal_during_start_up_is_a_graceful_stop(sched):
    proc = sched.start(workers=2)
    # As soon as the entry point can keep the signal: well before the loop exists.
    wait_until(lambda: catches_sigterm(proc.pid), 10, "the entry point's signal handler")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, stderr_of(proc)
