"""WorkerPool with real forked workers on a real SQLite file."""

import asyncio
import json
import os
import signal
import threading
import time

import pytest
from conftest import wait_for

from party.model import Status
from party.pool import ClaimPolicy, WorkerPool
from party.pool.forcerun import ForceRunClient, ForceRunUnavailable
from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

pytestmark = pytest.mark.processes  # real forked workers


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


def run_all(pool, tasks, timeout=10.0):
    """Dispatch ``tasks`` to free workers as they free up; return what finished."""
    waiting = list(tasks)
    finished = []
    deadline = time.monotonic() + timeout
    while waiting or pool.busy:
        assert time.monotonic() < deadline, f"{len(waiting)} undispatched, pool busy"
        while waiting and pool.free:
            pool.dispatch(waiting.pop(0))
        finished.extend(pool.poll(0.05))
    return finished


def test_pool_runs_claimed_tasks_in_worker_processes_and_records_them(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    queue.add([{"party": "Note", "data": {"n": i, "log": str(log)}} for i in range(40)])
    pool = make_pool(2)
    tasks = queue.claim(40)
    finished = run_all(pool, tasks)
    assert len(finished) == 40 and {f.status for f in finished} == {Status.COMPLETED}
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
    (done,) = run_all(pool, queue.claim(1))
    assert done.status == Status.QUEUED and done.error == "WorkerDied"
    stored = queue.get(task.id)
    assert stored.attempts == 1 and "exited with code 7" in stored.last_error["message"]
    wait_for(lambda: pool.poll() == [] and len(pool.pids) == 1, what="the replacement worker")
    assert pool.pids != before
    (done,) = run_all(pool, queue.claim(1))
    assert done.status == Status.COMPLETED
    assert queue.get(task.id).attempts == 2


def test_other_workers_keep_running_when_one_dies(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.5, "log": str(log)}}])
    queue.add([{"party": "DiesFirst", "data": {"log": str(log)}}])
    pool = make_pool(2)
    finished = {f.task.party: f for f in run_all(pool, queue.claim(2))}
    assert finished["Sleepy"].status == Status.COMPLETED
    assert finished["DiesFirst"].error == "WorkerDied"


def test_run_past_its_timeout_is_killed_and_counted_as_failed(db, make_pool, tmp_path):
    _, queue = db
    (task,) = queue.add([{"party": "Hangs", "data": {}}])
    pool = make_pool(1)
    (done,) = run_all(pool, queue.claim(1))
    assert done.error == "Timeout" and done.status == Status.QUEUED
    stored = queue.get(task.id)
    assert stored.last_error["message"] == "timed out after 1 s" and stored.attempts == 1
    assert queue.claim(1)[0].id == task.id
    wait_for(lambda: pool.poll() == [] and len(pool.pids) == 1, what="the replacement worker")


def test_a_worker_that_keeps_failing_to_start_is_restarted_with_growing_delays(
    registry, tmp_path, caplog
):
    # A store that is a folder: every worker exits at once with code 3.
    pool = WorkerPool(1, f"sqlite:///{tmp_path}", registry, lease_seconds=30)
    pool.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            pool.poll(0.05)
    finally:
        pool.kill()
    delays = [
        float(r.getMessage().rsplit(" in ", 1)[1].split()[0])
        for r in caplog.records
        if "starting a new one in" in r.getMessage()
    ]
    assert "could not open the store" in caplog.text
    # 0.1, 0.2, 0.4, 0.8 s...: a handful of restarts in two seconds, not hundreds.
    assert 3 <= len(delays) <= 6
    assert delays == sorted(delays) and delays[1] == 2 * delays[0]


def test_workers_are_forked_only_from_the_main_thread(db, registry):
    pool = WorkerPool(1, db[0], registry)
    errors = []

    def start():
        try:
            pool.start()
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(10)
    assert errors == ["workers are forked only from the main thread"] and pool.pids == []


def test_stop_hands_back_running_tasks_without_spending_an_attempt(db, make_pool, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}])
    pool = make_pool(1)
    pool.dispatch(queue.claim(1)[0])
    wait_for(lambda: lines(log), what="the run to start")
    (done,) = pool.stop(grace=0.2)
    assert done.released
    stored = queue.get(task.id)
    assert stored.status == Status.QUEUED and stored.attempts == 0 and stored.lease is None
    assert pool.pids == []


def test_slot_reads_never_see_a_half_written_run():
    from party.pool.slot import Slot

    slot = Slot(3)
    pid = os.fork()
    if pid == 0:  # the writer: never writes a zero time or sequence number
        for seq in range(1, 300_000):
            slot.set_run(seq % 3, float(seq), seq if seq % 2 else -seq)
        os._exit(0)
    seen = 0
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            for index, (started, seq) in enumerate(slot.entries()):
                if started:
                    assert abs(seq) == started and abs(seq) % 3 == index and not slot.stopping
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
    (done,) = run_all(pool, [queue.claim_now(task.id)])
    assert done.status == Status.COMPLETED


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
    wait_for(lambda: pids_file.exists() and pids_file.read_text(), what="the pool's pids")
    workers = json.loads(pids_file.read_text())
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    wait_for(lambda: not any(_alive(pid) for pid in workers), what="the workers to exit")


def test_a_worker_whose_scheduler_is_gone_lets_its_lease_lapse_and_ends(db, registry, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 60, "log": str(log)}}])
    pids_file = tmp_path / "pids"
    parent = os.fork()
    if (
        parent == 0
    ):  # a scheduler killed alone (an OOM kill): its worker is in a run that never ends
        try:
            policy = ClaimPolicy(poll_interval=0.05)
            pool = WorkerPool(1, db[0], registry, lease_seconds=1.5, claim=policy)
            pool.start()
            pids_file.write_text(json.dumps(pool.pids))
            time.sleep(60)
        finally:
            os._exit(0)
    wait_for(lambda: lines(log), 10, "the run to start")
    (worker,) = json.loads(pids_file.read_text())
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    wait_for(lambda: not _alive(worker), 10, "the worker to end once its lease ran out")
    stored = queue.get(task.id)  # recoverable now: the next scheduler runs it again
    assert stored.status == Status.RUNNING and stored.lease_expires <= system_now()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the force-run service ----------------------------------------------------------------------


@pytest.fixture
def force_runs(db, registry):
    """A started ForceRunClient (its service forked from this process) and a way to run tasks."""
    client = ForceRunClient(2, db[0], registry, lease_seconds=30)
    client.start()

    def run(*tasks, during=None):
        async def main():
            client.attach(asyncio.get_running_loop())
            runs = [asyncio.ensure_future(client.run(t)) for t in tasks]
            if during is not None:
                await asyncio.get_running_loop().run_in_executor(None, during)
            return await asyncio.gather(*runs, return_exceptions=True)

        return asyncio.run(asyncio.wait_for(main(), 30))

    yield client, run
    client.stop()


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_force_runs_share_the_warm_workers_and_each_gets_its_status(db, force_runs):
    _, queue = db
    client, run = force_runs
    tasks = queue.add([{"party": "Sleepy", "data": {"seconds": 0.05}} for _ in range(6)])
    answers = run(*[queue.claim_now(t.id) for t in tasks])
    assert answers == [Status.COMPLETED] * 6


def test_force_run_returns_the_failure_of_a_worker_that_died_running_it(db, force_runs):
    _, queue = db
    client, run = force_runs
    (task,) = queue.add([{"party": "DiesFirst", "data": {}}])
    assert run(queue.claim_now(task.id)) == [Status.QUEUED]
    assert queue.get(task.id).last_error["type"] == "WorkerDied"


def test_force_run_whose_worker_dies_before_starting_it_runs_on_a_fresh_worker(db, force_runs):
    _, queue = db
    client, run = force_runs
    wait_for(lambda: len(_children(client.pid)) == 2, what="the service's two workers")
    workers = _children(client.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # they receive the run but cannot start it
    (task,) = queue.add([{"party": "Note", "data": {"n": 3}}])

    def kill_the_stopped_workers():
        time.sleep(0.3)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    assert run(queue.claim_now(task.id), during=kill_the_stopped_workers) == [Status.COMPLETED]
    stored = queue.get(task.id)
    assert stored.result == 3 and stored.attempts == 1


async def _run_until_started(client, claimed, log):
    """Force-run ``claimed`` through ``client``; return the run's future once it has started
    (its handler wrote to ``log``)."""
    client.attach(asyncio.get_running_loop())
    running = asyncio.ensure_future(client.run(claimed))
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: wait_for(lambda: lines(log), what="the run to start")
    )
    return running


def test_a_force_run_waiting_for_a_worker_is_refused_before_its_lease_could_lapse(
    db, registry, tmp_path
):
    _, queue = db
    short = TaskQueue(queue.store, registry, lease_seconds=1.5)  # the server's --lease 1.5
    log = tmp_path / "log"
    busy, waits = queue.add([{"party": "Sleepy", "data": {"seconds": 3, "log": str(log)}}] * 2)
    client = ForceRunClient(1, db[0], registry, lease_seconds=1.5)
    client.start()

    async def main():
        first = await _run_until_started(client, short.claim_now(busy.id), log)
        second = await asyncio.gather(client.run(short.claim_now(waits.id)), return_exceptions=True)
        return second, await first

    try:
        ((refused,), ran) = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        client.stop()
    assert isinstance(refused, ForceRunUnavailable) and "free for 0.5 s" in str(refused)
    stored = queue.get(waits.id)
    assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)
    assert ran == Status.COMPLETED


def test_force_run_interrupted_by_the_stop_is_refused_and_handed_back(db, registry, tmp_path):
    _, queue = db
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}])
    client = ForceRunClient(1, db[0], registry, lease_seconds=30)
    client.start()

    async def main():
        running = await _run_until_started(client, queue.claim_now(task.id), log)
        client.stop(grace=0.1)
        return await asyncio.gather(running, return_exceptions=True)

    (answer,) = asyncio.run(asyncio.wait_for(main(), 30))
    assert isinstance(answer, ForceRunUnavailable) and "server is stopping" in str(answer)
    stored = queue.get(task.id)
    assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)
