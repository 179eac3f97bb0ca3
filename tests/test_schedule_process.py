"""Declared schedules with real `python scheduler/` processes on one SQLite store: two schedulers
create one task per schedule and run each slot of `every = 2` once; a scheduler stopped for three
slots runs once on restart; editing the handler file moves or deletes the queued task."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import wait_for

from party.model import Status
from party.queue import TaskQueue
from party.registry import Registry
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parent.parent

HANDLER = """
import json, os, time
from pathlib import Path
from party import TaskBase

LOG = Path(__file__).with_suffix(".log")

class Tick(TaskBase):
{declaration}
    def run(self):
        with open(LOG, "a") as f:
            f.write(json.dumps({{"slot": self.timestamp.isoformat(), "at": time.time(),
                                 "pid": os.getppid()}}) + "\\n")

class Yearly(TaskBase):
    schedule = "@yearly"
    timezone = "Europe/Berlin"
    schedule_data = {{"who": "all"}}

    def run(self):
        pass
"""


class Deploy:
    """A handler file that tests edit, and the scheduler processes that load it."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.file = tmp_path / "declared.py"
        self.url = f"sqlite:///{tmp_path / 'party.db'}"
        self.store = None
        self.procs = []

    def write(self, declaration):
        self.file.write_text(HANDLER.format(declaration=textwrap.indent(declaration, "    ")))

    def start(self):
        cmd = [sys.executable, str(ROOT / "scheduler"), "--store", self.url, "--tasks",
               str(self.file), "--workers", "1", "--lease", "30", "--grace", "5",
               "--poll-interval", "0.2"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
        err = open(self.tmp_path / f"scheduler-{len(self.procs)}.err", "w")
        with err:
            proc = subprocess.Popen(cmd, cwd=self.tmp_path, stderr=err, env=env)
        proc.err = Path(err.name)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, proc.err.read_text()

    def queue(self):
        if self.store is None:
            self.store = SqliteStore(self.tmp_path / "party.db")
        return TaskQueue(self.store, Registry())

    def tasks(self, party="Tick"):
        queue = self.queue()
        return [t for s in Status for t in queue.list(status=s, party=party)]

    def live(self, party="Tick"):
        return [t for t in self.tasks(party) if t.status in (Status.QUEUED, Status.RUNNING)]

    def runs(self):
        log = self.file.with_suffix(".log")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.store is not None:
            self.store.close()


@pytest.fixture
def deploy(tmp_path):
    d = Deploy(tmp_path)
    yield d
    d.close()


def test_two_schedulers_started_together_create_one_task_per_schedule(deploy):
    deploy.write("schedule = '0 9 * * MON-FRI'\ntimezone = 'America/New_York'")
    first, second = deploy.start(), deploy.start()
    wait_for(lambda: deploy.live() and deploy.live("Yearly"), 15, "the declared tasks")
    # Both have made their first pass once both beat (each passes at its start).
    wait_for(lambda: len(deploy.queue().store.schedulers()) == 2, 15, "two heartbeats")
    time.sleep(1.0)
    assert len(deploy.tasks()) == 1 and len(deploy.tasks("Yearly")) == 1
    (tick,) = deploy.live()
    assert tick.schedule == "cron 0 9 * * MON-FRI America/New_York"
    assert tick.timestamp > system_now()
    (yearly,) = deploy.live("Yearly")
    assert yearly.data == {"who": "all"}
    deploy.stop(first)
    deploy.stop(second)


def test_every_two_seconds_with_two_schedulers_runs_each_slot_once(deploy):
    deploy.write("every = 2")
    deploy.start(), deploy.start()
    wait_for(lambda: deploy.runs(), 15, "the first run")
    time.sleep(10)
    runs = deploy.runs()
    slots = [datetime.fromisoformat(r["slot"]) for r in runs]
    assert len(slots) == len(set(slots)), runs  # no slot ran twice
    assert 4 <= len(slots) <= 7, runs
    gaps = {(b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False)}
    assert all(gap > 0 and gap % 2 == 0 for gap in gaps), runs  # on the 2 s cadence
    assert len(deploy.tasks()) == 1  # one task, re-queued slot after slot


def test_a_scheduler_stopped_for_three_slots_runs_once_on_restart(deploy):
    deploy.write("every = 2")
    proc = deploy.start()
    wait_for(lambda: deploy.runs(), 15, "the first run")
    deploy.stop(proc)
    time.sleep(7)  # three slots of 2 s missed
    restarted = system_now()
    deploy.start()
    wait_for(lambda: len(deploy.runs()) >= 3, 20, "runs after the restart")
    after = deploy.runs()[1:]
    missed = [r for r in after if datetime.fromisoformat(r["slot"]) < restarted]
    assert len(missed) == 1, after  # the overdue slot once, the missed ones not replayed


def test_changing_every_in_the_file_moves_the_queued_task_and_removing_it_deletes_it(deploy):
    deploy.write("every = 60")
    proc = deploy.start()
    wait_for(lambda: deploy.runs(), 15, "the first run")
    (task,) = wait_for(
        lambda: [t for t in deploy.live() if t.status == Status.QUEUED and t.attempts == 0],
        10,
        "the task queued for its next slot",
    )
    assert task.timestamp > system_now() + timedelta(seconds=30)
    deploy.stop(proc)

    deploy.write("every = 2")
    proc = deploy.start()
    moved = wait_for(
        lambda: [t for t in deploy.tasks() if t.schedule == "every 2s"], 15, "the moved task"
    )
    assert [t.id for t in moved] == [task.id]
    wait_for(lambda: len(deploy.runs()) >= 3, 15, "runs on the new cadence")
    deploy.stop(proc)

    deploy.write("pass")  # the declaration removed, the class kept
    proc = deploy.start()
    wait_for(lambda: deploy.queue().get(task.id).status == Status.DELETED, 15, "the deletion")
    assert deploy.live() == []
    deploy.stop(proc)


def test_a_bad_declaration_stops_the_scheduler_at_start_naming_handler_and_expression(deploy):
    deploy.write("schedule = '0 9 * * FUNDAY'")
    proc = deploy.start()
    assert proc.wait(timeout=15) == 2
    err = proc.err.read_text()
    assert "Tick" in err and "'0 9 * * FUNDAY'" in err
