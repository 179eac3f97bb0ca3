"""WorkerPool with real forked workers on a real SQLite file."""

import json
import os
import signal
import threading
import time

import pytest

from party.model import Status
from party.pool import WorkerPool
from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore


@pytest.fixture
def db(tmp_path, registry):
    path = tmp_path / "pool.db"
    store = SqliteStore(path)
    yield f"sqlite:///{path}", TaskQueue(store, registry, lease_seconds=30)
    store.close()


@pytest.fixture
def make_pool(db, registry):
    pools = []

    def make(size=2, **kwargs):
        pool = WorkerPool(size, db[0], registry, lease_seconds=30, **kwargs)
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.kill()


def drain(pool, expected, timeout=10.0):
    """Poll the pool until ``expected`` tasks finished."""
    finished = []
    deadline = time.monotonic() + timeout
    while len(finished) < expected:
        assert time.monotonic() < deadline, f"only {len(finished)} of {expected} finished"
        finished.extend(pool.poll(0.1))
    return finished


def lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_pool_runs_claimed_tasks_in_worker_processes_and_records_them(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    queue.add([{"party": "Note", "data": {"n": i, "log": str(log)}} for i in range(40)])
    pool = make_pool(2)
    tasks = queue.claim(40)
    pool.submit(tasks, depth=20)
    finished = drain(pool, 40)
    assert {f.status for f in finished} == {Status.COMPLETED}
    assert all(queue.get(t.id).result == t.data["n"] for t in tasks)
    pids = {line["pid"] for line in lines(log)}
    assert pids <= set(pool.pids) and os.getpid() not in pids
    assert not pool.busy and pool.free == 2


def test_worker_dying_mid_task_fails_that_attempt_and_is_replaced(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "DiesFirst", "data": {"log": str(log)}}])
    pool = make_pool(1)
    before = pool.pids
    pool.submit(queue.claim(1))
    (done,) = drain(pool, 1)
    assert done.status == Status.QUEUED and done.error == "WorkerDied"
    stored = queue.get(task.id)
    assert stored.attempts == 1 and "exited with code 7" in stored.last_error["message"]
    assert pool.pids != before and len(pool.pids) == 1
    pool.submit(queue.claim(1))
    (done,) = drain(pool, 1)
    assert done.status == Status.COMPLETED
    assert queue.get(task.id).attempts == 2


def test_other_workers_keep_running_when_one_dies(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.5, "log": str(log)}}])
    queue.add([{"party": "DiesFirst", "data": {"log": str(log)}}])
    pool = make_pool(2)
    pool.submit(queue.claim(2))
    finished = {f.task.party: f for f in drain(pool, 2)}
    assert finished["Sleepy"].status == Status.COMPLETED
    assert finished["DiesFirst"].error == "WorkerDied"


def test_run_past_its_timeout_is_killed_and_counted_as_failed(db, make_pool, tmp_path):
    _, queue = db
    (task,) = queue.add([{"party": "Hangs", "data": {}}])
    pool = make_pool(1)
    start = time.monotonic()
    pool.submit(queue.claim(1))
    (done,) = drain(pool, 1)
    assert 1.0 <= time.monotonic() - start < 5
    assert done.error == "Timeout" and done.status == Status.QUEUED
    stored = queue.get(task.id)
    assert stored.last_error["message"] == "timed out after 1 s" and stored.attempts == 1
    assert queue.claim(1)[0].id == task.id
    assert len(pool.pids) == 1


def test_run_one_blocks_until_the_task_is_recorded(db, make_pool):
    _, queue = db
    (task,) = queue.add([{"party": "Note", "data": {"n": 5}}])
    pool = make_pool(1)
    assert pool.run_one(queue.claim_now(task.id)) == Status.COMPLETED
    assert queue.get(task.id).result == 5


def test_run_one_shares_workers_safely_between_threads(db, make_pool):
    _, queue = db
    tasks = queue.add([{"party": "Sleepy", "data": {"seconds": 0.05}} for _ in range(8)])
    pool = make_pool(2)
    results = {}

    def force(task):
        results[task.id] = pool.run_one(queue_for_thread().claim_now(task.id))

    stores = []

    def queue_for_thread():
        store = SqliteStore(db[0][len("sqlite:///") :])
        stores.append(store)
        return TaskQueue(store, queue.registry)

    threads = [threading.Thread(target=force, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for store in stores:
        store.close()
    assert results == {t.id: Status.COMPLETED for t in tasks}


def test_run_one_returns_the_failure_of_a_dead_worker(db, make_pool):
    _, queue = db
    (task,) = queue.add([{"party": "DiesFirst", "data": {}}])
    pool = make_pool(1)
    assert pool.run_one(queue.claim_now(task.id)) == Status.QUEUED
    assert queue.get(task.id).last_error["type"] == "WorkerDied"


def test_run_one_waiting_when_the_pool_stops_gets_the_hand_back(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}])
    pool = make_pool(1)
    answer = []
    caller = threading.Thread(target=lambda: answer.append(pool.run_one(queue.claim_now(task.id))))
    caller.start()
    wait_for(lambda: lines(log))
    pool.stop(grace=0.1)
    caller.join(5)
    assert not caller.is_alive() and answer == [Status.QUEUED]
    assert queue.get(task.id).attempts == 0
    with pytest.raises(RuntimeError, match="stopping"):
        pool.run_one(task)


def test_stop_hands_back_running_tasks_without_spending_an_attempt(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}])
    pool = make_pool(1)
    pool.submit(queue.claim(1))
    wait_for(lambda: lines(log))
    start = time.monotonic()
    (done,) = pool.stop(grace=0.2)
    assert time.monotonic() - start < 3
    assert done.released
    stored = queue.get(task.id)
    assert stored.status == Status.QUEUED and stored.attempts == 0 and stored.lease is None
    assert pool.pids == []


def test_prefetched_tasks_are_handed_back_unstarted(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.3, "log": str(log)}}])
    queue.add([{"party": "Note", "data": {"log": str(log)}} for _ in range(2)])
    pool = make_pool(1)
    pool.submit(queue.claim(3), depth=3)
    wait_for(lambda: lines(log))
    pool.hand_back_unstarted()
    finished = drain(pool, 3)
    by_party = {}
    for f in finished:
        by_party.setdefault(f.task.party, []).append(f)
    assert by_party["Sleepy"][0].status == Status.COMPLETED
    assert all(f.released for f in by_party["Note"])
    assert [line["party"] for line in lines(log)] == ["Sleepy"]
    assert all(t.attempts == 0 for t in queue.list(status="queued"))


def test_slot_reads_never_see_a_half_written_run():
    from party.worker import _set_run, new_slot, read_slot

    slot = new_slot()
    pid = os.fork()
    if pid == 0:  # the writer: never writes a zero time or sequence number
        for seq in range(1, 300_000):
            _set_run(slot, float(seq), seq if seq % 2 else -seq)
        os._exit(0)
    seen = 0
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            started, seq, stop = read_slot(slot)
            if started:
                assert abs(seq) == started and stop == 0
                seen += 1
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert seen > 0


def test_workers_ignore_sigint_and_sigterm(make_pool, db):
    _, queue = db
    pool = make_pool(1)
    (pid,) = pool.pids
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert pool.poll() == [] and pool.pids == [pid]
    (task,) = queue.add([{"party": "Note", "data": {"n": 1}}])
    assert pool.run_one(queue.claim_now(task.id)) == Status.COMPLETED


def test_workers_exit_when_their_parent_is_gone(db, registry, tmp_path):
    pids_file = tmp_path / "pids"
    parent = os.fork()
    if parent == 0:  # an intermediate process that owns a pool, then gets killed
        try:
            pool = WorkerPool(2, db[0], registry)
            pool.start()
            pids_file.write_text(json.dumps(pool.pids))
            time.sleep(60)
        finally:
            os._exit(0)
    wait_for(lambda: pids_file.exists() and pids_file.read_text())
    workers = json.loads(pids_file.read_text())
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=5)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
