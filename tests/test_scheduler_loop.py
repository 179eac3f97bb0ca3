"""Scheduler and claiming workers over a real pool (forked workers) and a real SQLite file.

The workers claim with the system clock; the scheduler's clock is injected (it starts at the
system time, and the lease tests step it).
"""

import json
import threading
import time
from datetime import timedelta

import pytest
from conftest import wait_for

from party.errors import StoreUnavailable
from party.model import Status, Task
from party.pool import ClaimPolicy, WorkerPool
from party.queue import TaskQueue
from party.scheduler import Scheduler
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

pytestmark = pytest.mark.processes  # every test forks a pool

LEASE = 30


class Clock:
    def __init__(self):
        self.now = system_now()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)
        return self.now


class FlakyStore(SqliteStore):
    """A SQLite store whose next ``failures`` looks for expired leases fail, as a store that went
    away would (the scheduler's first store call of a pass)."""

    failures = 0

    def expired(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("store went away (test)")
        return super().expired(*args, **kwargs)


@pytest.fixture
def env(tmp_path, registry):
    """(queue, clock, make_scheduler) on one SQLite file; pools are killed afterwards."""
    path = tmp_path / "loop.db"
    clock = Clock()
    store = FlakyStore(path)
    queue = TaskQueue(store, registry, lease_seconds=LEASE, clock=clock)
    pools = []

    def make_scheduler(workers=1, max_depth=128, **kwargs):
        policy = ClaimPolicy(poll_interval=0.05, max_depth=max_depth)
        pool = WorkerPool(workers, f"sqlite:///{path}", registry, lease_seconds=LEASE, claim=policy)
        pool.start()
        pool.attach_queue(queue)
        pools.append(pool)
        kwargs.setdefault("poll_interval", 0.05)
        return Scheduler(queue, pool, clock=clock, **kwargs)

    yield queue, clock, make_scheduler
    for pool in pools:
        pool.kill()
    store.close()


def settle(scheduler, expected, timeout=10.0):
    """Tick without advancing the clock until ``expected`` runs finished."""
    finished = []
    deadline = time.monotonic() + timeout
    while len(finished) < expected:
        assert time.monotonic() < deadline, f"only {len(finished)} of {expected} finished"
        scheduler.pool.wait(0.05)
        finished.extend(scheduler.tick().finished)
    return finished


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_lines(path, n, timeout=5.0):
    wait_for(lambda: len(lines(path)) >= n, timeout)


def test_a_worker_claims_and_runs_due_tasks_in_queue_order(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    now = system_now()
    late, early = queue.add(
        [
            {"party": "Note", "timestamp": now - timedelta(seconds=1), "data": {"log": str(log)}},
            {"party": "Note", "timestamp": now - timedelta(seconds=5), "data": {"log": str(log)}},
        ]
    )
    scheduler = make_scheduler(workers=1)
    settle(scheduler, 2)
    assert [line["id"] for line in lines(log)] == [early.id, late.id]


def test_task_claimed_ahead_of_its_time_never_starts_before_it(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    scheduler = make_scheduler(workers=2)
    due = system_now() + timedelta(seconds=0.5)
    (task,) = queue.add([{"party": "Note", "timestamp": due, "data": {"log": str(log)}}])
    settle(scheduler, 1)
    (line,) = lines(log)
    assert line["id"] == task.id
    started = queue.get(task.id).started_on
    assert due <= started < due + timedelta(seconds=1)


def test_idle_workers_wake_for_the_next_task_not_the_poll_interval(env, tmp_path):
    queue, clock, make_scheduler = env
    path = queue.store.path
    pool = WorkerPool(
        1, f"sqlite:///{path}", queue.registry, lease_seconds=LEASE,
        claim=ClaimPolicy(poll_interval=30),
    )  # fmt: skip
    pool.start()
    try:
        time.sleep(0.2)  # asleep towards the poll interval, nothing queued
        due = system_now() + timedelta(seconds=0.3)
        (task,) = queue.add([{"party": "Note", "timestamp": due}])
        wait_for(lambda: queue.get(task.id).status == Status.COMPLETED, timeout=5)
        assert queue.get(task.id).started_on < due + timedelta(seconds=2)
    finally:
        pool.kill()


def test_prefetch_grows_only_under_a_backlog_and_stays_bounded(env):
    queue, clock, make_scheduler = env
    # 2 ms each (0.2 s in all on 2 workers): a backlog that lasts long enough to be watched even
    # when this process is scheduled rarely (with no-op tasks the drain could end unobserved).
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.002}} for _ in range(200)])
    scheduler = make_scheduler(workers=2, max_depth=4)
    held = []
    finished = []
    deadline = time.monotonic() + 30
    while len(finished) < 200:
        assert time.monotonic() < deadline
        scheduler.pool.wait(0.01)
        finished.extend(scheduler.tick().finished)
        # Runs finished but not yet reported do not count: only the prefetch is bounded.
        held.append(scheduler.pool.held)
        assert held[-1] <= 2 * 4
    assert max(held) > 2
    assert queue.stats()["statuses"]["completed"] == 200


def test_long_tasks_get_no_prefetch(env):
    queue, clock, make_scheduler = env
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.1}} for _ in range(6)])
    scheduler = make_scheduler(workers=1, max_depth=16)
    finished = []
    deadline = time.monotonic() + 20
    while len(finished) < 6:
        assert time.monotonic() < deadline
        scheduler.pool.wait(0.01)
        finished.extend(scheduler.tick().finished)
        # Before its first run ends a worker cannot know the tasks are long, so it may have
        # prefetched one; once it knows, it claims one task at a time.
        if len(finished) >= 2:
            assert scheduler.pool.held <= 1


def test_workers_keep_their_leases_alive_while_the_scheduler_does_nothing(env, registry, tmp_path):
    queue, clock, _ = env
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 2.5}}])
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    # A lease of 0.9 s, renewed every 0.3 s by the worker itself; this test never ticks a
    # scheduler, and recovers expired leases all along as another scheduler would.
    pool = WorkerPool(1, url, registry, lease_seconds=0.9, claim=ClaimPolicy(poll_interval=0.05))
    pool.start()
    try:
        first = wait_for(lambda: queue.get(task.id).lease_expires, what="the claim")
        recovered = []
        deadline = time.monotonic() + 20
        while queue.get(task.id).status == Status.RUNNING:
            assert time.monotonic() < deadline, "the 2.5 s run never ended"
            recovered += TaskQueue(queue.store, registry).recover_expired(now=system_now())
            time.sleep(0.05)
        assert recovered == []
        stored = queue.get(task.id)
        assert (stored.status, stored.attempts) == (Status.COMPLETED, 1)
        assert stored.completed_on - stored.started_on > timedelta(seconds=2)
        assert first < stored.started_on + timedelta(seconds=1)
    finally:
        pool.kill()


def test_expired_lease_of_another_scheduler_is_recovered_with_its_attempt_spent(env):
    queue, clock, make_scheduler = env
    long_ago = system_now() - timedelta(seconds=LEASE + 5)
    (task,) = queue.add([{"party": "Note", "timestamp": long_ago}])
    crashed = TaskQueue(queue.store, queue.registry, lease_seconds=LEASE,
                        clock=lambda: system_now() - timedelta(seconds=LEASE + 1))  # fmt: skip
    (claimed,) = crashed.claim(1)  # a scheduler that then crashed; its lease is over
    scheduler = make_scheduler()
    assert scheduler.tick().recovered == 1
    (done,) = settle(scheduler, 1)
    assert done.status == Status.COMPLETED
    assert queue.get(task.id).attempts == 2


def test_run_until_idle_drains_every_due_task(env):
    queue, clock, make_scheduler = env
    tasks = queue.add([{"party": "Note", "data": {"n": i}} for i in range(50)])
    scheduler = make_scheduler(workers=2)
    assert scheduler.run(until_idle=True) == 0
    assert {queue.get(t.id).status for t in tasks} == {Status.COMPLETED}


def test_store_that_stops_answering_is_retried_and_the_loop_carries_on(env, caplog):
    queue, clock, make_scheduler = env
    (task,) = queue.add([{"party": "Note"}])
    queue.store.failures = 2
    scheduler = make_scheduler()
    assert scheduler.run(until_idle=True) == 0
    assert queue.get(task.id).status == Status.COMPLETED
    assert caplog.text.count("store unavailable, retrying") == 2


def test_a_task_whose_handler_the_scheduler_lacks_waits_queued_and_the_rest_run(env):
    queue, clock, make_scheduler = env
    now = clock.now
    ghost = Task(id="0" * 24, party="Ghost", data={}, timestamp=now, created=now, run_at=now)
    queue.store.insert_many([ghost])  # added through a server that has the handler
    (good,) = queue.add([{"party": "Note"}])
    scheduler = make_scheduler(workers=1)

    def stop_once_the_rest_ran():
        try:  # the scheduler stops even if the other task never runs: the asserts then say so
            wait_for(lambda: queue.get(good.id).status == Status.COMPLETED, 15, "the other task")
            time.sleep(0.3)  # a few more passes: the ghost stays passed over
        finally:
            scheduler.stop_requested = True

    threading.Thread(target=stop_once_the_rest_ran, daemon=True).start()
    assert scheduler.run() == 0
    waiting = queue.get(ghost.id)
    assert (waiting.status, waiting.attempts, waiting.lease, waiting.last_error) == (
        Status.QUEUED, 0, None, None
    )  # fmt: skip
    assert queue.get(good.id).status == Status.COMPLETED


def test_a_child_its_handler_forks_never_runs_the_workers_code(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    forks = [
        {"party": "ForksChild", "data": {"child": c, "log": str(log)}} for c in ("returns", "exits")
    ]
    notes = [{"party": "Note", "data": {"n": i, "log": str(log)}} for i in range(20)]
    tasks = queue.add([forks[0], *notes[:10], forks[1], *notes[10:]])
    scheduler = make_scheduler(workers=1)  # one worker holds the notes claimed ahead of the forks
    assert scheduler.run(until_idle=True) == 0
    stored = [queue.get(t.id) for t in tasks]
    assert {(t.status, t.attempts) for t in stored} == {(Status.COMPLETED, 1)}
    assert [queue.get(tasks[i].id).result for i in (0, 11)] == ["parent", "parent"]
    assert sorted(line["id"] for line in lines(log)) == sorted(t.id for t in tasks)  # once each


def test_graceful_stop_hands_back_unfinished_tasks_without_spending_an_attempt(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    tasks = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}] * 3)
    scheduler = make_scheduler(workers=1, grace=0.3, max_depth=4)
    wait_for_lines(log, 1)  # the worker claimed and started one; it may hold more
    scheduler.stop_requested = True
    start = time.monotonic()
    assert scheduler.run() == 0
    assert time.monotonic() - start < 3
    stored = [queue.get(t.id) for t in tasks]
    assert [(t.status, t.attempts, t.lease) for t in stored] == [(Status.QUEUED, 0, None)] * 3
    assert len(lines(log)) == 1 and scheduler.pool.pids == []


def test_running_task_that_finishes_within_the_grace_period_is_recorded(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 0.3, "log": str(log)}}])
    scheduler = make_scheduler(grace=10)
    wait_for_lines(log, 1)
    scheduler.stop_requested = True
    assert scheduler.run() == 0
    assert queue.get(task.id).status == Status.COMPLETED


def test_abort_kills_workers_at_once_and_leaves_leases_to_recovery(env):
    queue, clock, make_scheduler = env
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30}}])
    scheduler = make_scheduler()
    wait_for(lambda: queue.get(task.id).status == Status.RUNNING)
    scheduler.abort_requested = True
    assert scheduler.run() == 1
    stored = queue.get(task.id)
    assert stored.status == Status.RUNNING and stored.lease is not None
    assert scheduler.pool.pids == []
