"""Schedulers' heartbeats: the store keeps one record per scheduler, the loop writes it every few
seconds with what runs where and its run counters, and a stopped scheduler says so."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import wait_for

from party.model import Status
from party.pool import ClaimPolicy, Finished, WorkerPool
from party.pool.messages import Claimed
from party.queue import TaskQueue
from party.scheduler import Scheduler
from party.scheduler.heartbeat import BEAT_EVERY, Heartbeat, outcome_of
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "tests" / "handlers"


def test_the_store_keeps_one_record_per_scheduler_and_finds_the_live_ones(store, clock):
    now = clock.now
    store.beat({"id": "a", "started": "2030-01-01T11:00:00Z", "workers": 2}, now)
    store.beat({"id": "b", "started": "2030-01-01T11:30:00Z", "workers": 1}, now)
    store.beat({"id": "a", "started": "2030-01-01T11:00:00Z", "workers": 3}, now)  # again
    later = now + timedelta(seconds=10)
    store.beat({"id": "b", "started": "2030-01-01T11:30:00Z", "workers": 1}, later)
    records = store.schedulers()
    assert [(r["id"], r["workers"]) for r in records] == [("a", 3), ("b", 1)]
    assert [r["id"] for r in store.schedulers(since=later - timedelta(seconds=6))] == ["b"]
    assert store.schedulers(since=later)[0]["heartbeat"] == later
    assert store.forget_schedulers(before=later) == 1
    assert [r["id"] for r in store.schedulers()] == ["b"]


@pytest.mark.parametrize(
    "status, error, counted",
    [
        (Status.COMPLETED, None, "completed"),
        (Status.QUEUED, None, "completed"),  # a recurring task queued its next run
        (Status.QUEUED, "RuntimeError", "retried"),
        (Status.FAILED, "RuntimeError", "failed"),
        (None, None, None),  # the outcome was discarded with its lost lease
    ],
)
def test_each_finished_run_counts_once_by_outcome(status, error, counted):
    assert outcome_of(status, error) == counted


def test_a_batch_of_finished_runs_counts_as_each_run_counted_in_turn():
    runs = [
        Finished(Claimed(1, "a", "Noop", 1, "l"), Status.COMPLETED, 0.002, late=0.0004),
        Finished(Claimed(2, "b", "Boom", 1, "l"), Status.QUEUED, 0.1, "RuntimeError", late=-1e-6),
        Finished(Claimed(3, "c", "Noop", 1, "l"), Status.QUEUED, 7.5, late=2.0),
        Finished(Claimed(4, "d", "Boom", 2, "l"), Status.FAILED, 0.3, "RuntimeError", late=0.01),
        Finished(Claimed(5, "e", "Noop", 1, "l"), Status.QUEUED, released=True),  # a hand-back
        Finished(Claimed(6, "f", "Noop", 1, "l"), None, 0.5, late=0.1),  # outcome discarded
        Finished(Claimed(7, "g", "Sleepy", 1, "l"), Status.QUEUED, 3.0, "WorkerDied"),  # no late
        Finished(Claimed(8, "h", "Noop", 1, "l"), Status.COMPLETED, -0.0, late=1e9),
    ]
    one_by_one, batched = (
        Heartbeat(None, workers=1, handlers=[], started=system_now())  # type: ignore[arg-type]
        for _ in range(2)
    )
    for run in runs:
        if not run.released:
            one_by_one.count(run.task.party, outcome_of(run.status, run.error), run.duration,
                             run.late)  # fmt: skip
    batched.count_finished(runs[:3])
    batched.count_finished(runs[3:])
    assert batched.counters == one_by_one.counters
    assert batched.histograms == one_by_one.histograms
    assert repr(batched.counters) == repr(one_by_one.counters)  # the same order, too
    assert repr(batched.histograms) == repr(one_by_one.histograms)


@pytest.fixture
def looped(tmp_path, registry):
    path = tmp_path / "beat.db"
    store = SqliteStore(path)
    queue = TaskQueue(store, registry, lease_seconds=30)
    pool = WorkerPool(
        2, f"sqlite:///{path}", registry, lease_seconds=30, claim=ClaimPolicy(poll_interval=0.05)
    )
    pool.start()
    pool.attach_queue(queue)
    heartbeat = Heartbeat(store, workers=2, handlers=registry.names, started=system_now())
    scheduler = Scheduler(queue, pool, poll_interval=0.05, grace=5, heartbeat=heartbeat)
    yield queue, scheduler, tmp_path
    pool.kill()
    store.close()


@pytest.mark.processes
def test_the_heartbeat_shows_what_runs_where_and_counts_the_runs(looped):
    queue, scheduler, tmp_path = looped
    log = tmp_path / "log"
    (sleepy,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}])
    wait_for(log.exists, 10, "the long run to start")
    queue.add([{"party": "Boom"}, {"party": "Noop"}])

    def beat_with_the_run():
        scheduler.heartbeat._next = None  # a beat is due at every pass
        scheduler.tick()
        (record,) = queue.store.schedulers()
        return record if any(r["party"] == "Sleepy" for r in record["running"]) else None

    record = wait_for(beat_with_the_run, 10, "a beat showing the run")
    (run,) = [r for r in record["running"] if r["party"] == "Sleepy"]
    assert run["_id"] == sleepy.id and run["pid"] in scheduler.pool.pids
    assert record["pid"] == os.getpid() and record["workers"] == 2
    assert "Sleepy" in record["handlers"] and record["stopped"] is None

    def counted():
        scheduler.heartbeat._next = None
        scheduler.tick()
        return queue.store.schedulers()[0]["runs"]

    wait_for(lambda: counted().get("Noop"), 10, "the Noop run to be counted")
    runs = wait_for(lambda: "failed" in counted().get("Boom", {}) and counted(), 10, "Boom")
    # Boom fails every attempt: five retried runs, then the sixth fails it for good.
    assert runs == {"Noop": {"completed": 1}, "Boom": {"retried": 5, "failed": 1}}


@pytest.mark.processes
def test_a_stopped_scheduler_says_so_in_its_last_beat(looped):
    queue, scheduler, _ = looped
    scheduler.tick()
    scheduler.stop_requested = True
    assert scheduler.run() == 0
    (record,) = queue.store.schedulers()
    assert record["stopped"] is not None and record["running"] == []


@pytest.mark.processes
def test_a_scheduler_process_beats_every_few_seconds(tmp_path):
    db = tmp_path / "p.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{db}", "--tasks",
         str(HANDLERS), "--workers", "2", "--log-level", "WARNING"],
        env=env,
    )  # fmt: skip
    try:
        store = wait_for(lambda: db.exists() and SqliteStore(db), 10, "the store")
        first = wait_for(lambda: store.schedulers(), 10, "a first beat")[0]
        assert (first["pid"], first["workers"]) == (proc.pid, 2)
        wait_for(
            lambda: store.schedulers()[0]["heartbeat"] > first["heartbeat"],
            BEAT_EVERY * 3,
            "a second beat",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert store.schedulers()[0]["stopped"] is not None
    store.close()
