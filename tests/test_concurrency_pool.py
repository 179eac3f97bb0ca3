"""Runs at once inside one worker, at the level of ``WorkerPool`` and the runner: which runs a
dead worker had in progress, hand-backs on stop, async force-runs, the claim for every slot."""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from party.model import Status
from party.pool import ClaimPolicy, WorkerPool
from party.pool.claiming import Prefetch
from party.pool.forcerun import ForceRunClient
from party.queue import TaskQueue
from party.registry import discover
from party.runner import run_task
from party.stores.sqlite import SqliteStore

HANDLERS = Path(__file__).resolve().parent / "handlers" / "concurrency_handlers.py"


@pytest.fixture(scope="module")
def handlers():
    return discover([str(HANDLERS)])


@pytest.fixture
def db(tmp_path, handlers):
    path = tmp_path / "pool.db"
    store = SqliteStore(path)
    yield f"sqlite:///{path}", TaskQueue(store, handlers, lease_seconds=30)
    store.close()


@pytest.fixture
def make_pool(db, handlers):
    pools = []

    def make(size=1, concurrency=10):
        pool = WorkerPool(
            size, db[0], handlers, lease_seconds=30, concurrency=concurrency,
            claim=ClaimPolicy(poll_interval=0.2),
        )  # fmt: skip
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.kill()


def started(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_worker_with_room_for_64_runs_claims_64():
    prefetch = Prefetch(ClaimPolicy(), concurrency=64)
    assert prefetch.wants_more(0, 0) and prefetch.room(0) == 64
    prefetch.claimed(64, 64)
    assert prefetch.depth == 64  # no prefetch beyond the slots before a run has ended
    prefetch.ran(0.02)
    prefetch.claimed(64, 64)
    assert 64 < prefetch.depth <= 64 + int(0.05 * 64 / 0.02)
    assert not prefetch.wants_more(100, 64) and prefetch.wants_more(0, 63)


@pytest.mark.processes
def test_kill_9_of_a_worker_fails_exactly_the_runs_it_had_in_progress(db, make_pool, tmp_path):
    _, queue = db
    log, gate = tmp_path / "log", tmp_path / "gate"
    tasks = queue.add(
        [{"party": "Gate", "data": {"n": i, "log": str(log), "gate": str(gate)}} for i in range(25)]
    )
    pool = make_pool(1, concurrency=10)
    deadline = time.monotonic() + 10
    while len(started(log)) < 10 or pool.held < 10:
        assert time.monotonic() < deadline, "ten runs did not start"
        assert pool.poll(0.05) == []
    (pid,) = pool.pids
    os.kill(pid, signal.SIGKILL)
    finished = []
    deadline = time.monotonic() + 10
    while len(finished) < 10:
        assert time.monotonic() < deadline, f"{len(finished)} of 10 runs accounted for"
        finished.extend(pool.poll(0.05))
    in_progress = {run["id"] for run in started(log)}
    assert {f.task.id for f in finished} == in_progress and len(in_progress) == 10
    assert {(f.status, f.error, f.released) for f in finished} == {
        (Status.QUEUED, "WorkerDied", False)
    }
    for task in tasks:  # read before the next poll starts a replacement
        stored = queue.get(task.id)
        if task.id in in_progress:
            assert (stored.attempts, stored.last_error["type"]) == (1, "WorkerDied")
        else:
            assert (stored.attempts, stored.last_error, stored.lease) == (0, None, None)
        assert stored.status == Status.QUEUED


@pytest.mark.processes
def test_stop_lets_runs_finish_and_hands_back_the_prefetch(db, make_pool, tmp_path):
    _, queue = db
    log, gate = tmp_path / "log", tmp_path / "gate"
    quick = queue.add([{"party": "ThreadNap", "data": {"seconds": 0}} for _ in range(60)])
    gated = queue.add(
        [{"party": "Gate", "data": {"n": i, "log": str(log), "gate": str(gate)}} for i in range(40)]
    )
    pool = make_pool(1, concurrency=4)
    finished = []
    deadline = time.monotonic() + 10
    while len(started(log)) < 4:
        assert time.monotonic() < deadline, "the gated runs did not start"
        finished.extend(pool.poll(0.05))
    pool.hand_back_unstarted()
    gate.write_text("")
    finished.extend(pool.stop(grace=10))
    running = {run["id"] for run in started(log)}
    assert len(running) == 4
    for task in quick:
        assert queue.get(task.id).status == Status.COMPLETED
    for task in gated:
        stored = queue.get(task.id)
        if task.id in running:
            assert (stored.status, stored.attempts) == (Status.COMPLETED, 1)
        else:
            assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)


@pytest.mark.processes
def test_force_run_runs_an_async_handler_in_a_warm_worker(db, handlers):
    _, queue = db
    (task,) = queue.add([{"party": "AsyncNap", "data": {"seconds": 0.05}}])
    client = ForceRunClient(1, db[0], handlers, lease_seconds=30)
    client.start()
    try:

        async def main():
            client.attach(asyncio.get_running_loop())
            return await client.run(queue.claim_now(task.id))

        assert asyncio.run(asyncio.wait_for(main(), 30)) == Status.COMPLETED
    finally:
        client.stop()
    result = queue.get(task.id).result
    assert result["hooked"] and result["same_loop"] and result["pid"] != os.getpid()


def test_run_task_drives_an_async_run_and_an_async_on_complete(db):
    _, queue = db
    (nap,) = queue.add([{"party": "AsyncNap", "data": {"seconds": 0}}])
    (chain,) = queue.add([{"party": "AsyncOnComplete"}])
    outcome = run_task(queue.claim_now(nap.id), queue.registry)
    assert outcome.ok and outcome.result["pid"] == os.getpid()
    outcome = run_task(queue.claim_now(chain.id), queue.registry)
    assert outcome.ok and [f.party for f in outcome.follow_ups] == ["ThreadNap"]


def test_a_pool_that_runs_several_at_once_claims_for_itself(db, handlers):
    with pytest.raises(ValueError, match="claim their own"):
        WorkerPool(1, db[0], handlers, concurrency=2)
