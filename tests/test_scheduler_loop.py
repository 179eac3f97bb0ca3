"""Scheduler.tick(now) stepped with an injected clock, over a real pool and a real SQLite file."""

import json
import time
from datetime import datetime, timedelta

import pytest

from party.errors import StoreUnavailable
from party.model import Status, Task
from party.pool import WorkerPool
from party.queue import TaskQueue
from party.scheduler import Scheduler
from party.scheduler.loop import CLAIM_AHEAD
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

LEASE = 30


class Clock:
    def __init__(self):
        self.now = datetime(2030, 1, 1, 12, 0, 0)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)
        return self.now


class FlakyStore(SqliteStore):
    """A SQLite store that fails its next ``failures`` claims, as a store that went away would."""

    failures = 0

    def claim(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("store went away (test)")
        return super().claim(*args, **kwargs)


@pytest.fixture
def env(tmp_path, registry):
    """(queue, clock, make_scheduler) on one SQLite file; pools are killed afterwards."""
    path = tmp_path / "loop.db"
    clock = Clock()
    store = FlakyStore(path)
    queue = TaskQueue(store, registry, lease_seconds=LEASE, clock=clock)
    pools = []

    def make_scheduler(workers=1, **kwargs):
        pool = WorkerPool(workers, f"sqlite:///{path}", registry, lease_seconds=LEASE)
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
    deadline = time.monotonic() + timeout
    while len(lines(path)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} lines in {path}"
        time.sleep(0.01)


def test_tick_claims_one_task_per_free_worker_in_queue_order(env):
    queue, clock, make_scheduler = env
    now = clock.now
    late, early = queue.add(
        [
            {"party": "Note", "timestamp": now - timedelta(seconds=1)},
            {"party": "Note", "timestamp": now - timedelta(seconds=5)},
        ]
    )
    scheduler = make_scheduler(workers=1)
    claimed = []
    while len(claimed) < 2:
        tick = scheduler.tick()
        assert len(tick.claimed) <= 1
        claimed.extend(t.id for t in tick.claimed)
        scheduler.pool.wait(0.05)
    assert claimed == [early.id, late.id]


def test_task_is_claimed_at_most_claim_ahead_early_and_held_until_its_time(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    due = clock.now + timedelta(seconds=2)
    (task,) = queue.add([{"party": "Note", "timestamp": due, "data": {"log": str(log)}}])
    scheduler = make_scheduler()
    assert scheduler.tick().claimed == []
    clock.advance(2 - CLAIM_AHEAD - 0.001)
    assert scheduler.tick().claimed == []
    clock.advance(0.001)
    handed_at = system_now()
    assert [t.id for t in scheduler.tick().claimed] == [task.id]
    wait_for_lines(log, 1)
    (line,) = lines(log)
    # The worker holds it for the CLAIM_AHEAD still to go on the scheduler's clock.
    assert datetime.fromisoformat(line["at"]) >= handed_at + timedelta(seconds=CLAIM_AHEAD)


def test_sleep_ends_when_the_next_task_is_due(env):
    queue, clock, make_scheduler = env
    queue.add([{"party": "Note", "timestamp": clock.now + timedelta(seconds=0.02)}])
    scheduler = make_scheduler(poll_interval=10)
    tick = scheduler.tick()
    assert 0 < scheduler._sleep_for(tick) <= 0.02


def test_prefetch_grows_only_under_a_backlog_and_stays_bounded(env):
    queue, clock, make_scheduler = env
    queue.add([{"party": "Sleepy", "data": {"seconds": 0}} for _ in range(200)])
    scheduler = make_scheduler(workers=2, max_depth=4)
    sizes = []
    finished = []
    while sum(sizes) < 200:
        scheduler.pool.wait(0.05)
        tick = scheduler.tick()
        sizes.append(len(tick.claimed))
        finished.extend(tick.finished)
        # Runs finished but not yet reported do not count: only the prefetch is bounded.
        assert scheduler.pool.held <= 2 * 4
    assert sizes[0] == 2 and max(sizes) > 2
    settle(scheduler, 200 - len(finished))
    assert queue.stats()["statuses"]["completed"] == 200


def test_long_tasks_get_no_prefetch(env):
    queue, clock, make_scheduler = env
    queue.add([{"party": "Sleepy", "data": {"seconds": 0.1}} for _ in range(6)])
    scheduler = make_scheduler(workers=1, max_depth=16)
    finished = []
    while len(finished) < 6:
        scheduler.pool.wait(0.05)
        tick = scheduler.tick()
        finished.extend(tick.finished)
        # Before the first run ends the scheduler cannot know the tasks are long, so it may have
        # prefetched a few; once it knows, it claims only for an idle worker, one task at a time.
        # (A run finished but not yet reported does not count: the worker is free.)
        if finished and tick.claimed:
            assert len(tick.claimed) == 1 and scheduler.pool.held <= 1


def test_leases_of_running_tasks_are_renewed_before_they_expire(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 2, "log": str(log)}}])
    scheduler = make_scheduler()
    scheduler.tick()
    first = queue.get(task.id).lease_expires
    assert first == clock.now + timedelta(seconds=LEASE)
    clock.advance(LEASE / 3)
    assert scheduler.tick().renewed == 1
    assert queue.get(task.id).lease_expires == clock.now + timedelta(seconds=LEASE)


def test_expired_lease_of_another_scheduler_is_recovered_with_its_attempt_spent(env):
    queue, clock, make_scheduler = env
    (task,) = queue.add([{"party": "Note"}])
    (claimed,) = queue.claim(1)  # a scheduler that then crashed
    scheduler = make_scheduler()
    assert scheduler.tick().recovered == 0
    clock.advance(LEASE + 1)
    tick = scheduler.tick()
    assert tick.recovered == 1 and [t.id for t in tick.claimed] == [task.id]
    assert tick.claimed[0].attempts == 2
    (done,) = settle(scheduler, 1)
    assert done.status == Status.COMPLETED


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


def test_unknown_handler_in_the_store_fails_that_task_and_nothing_else(env):
    queue, clock, make_scheduler = env
    now = clock.now
    ghost = Task(id="0" * 24, party="Ghost", data={}, timestamp=now, created=now, run_at=now)
    queue.store.insert_many([ghost])
    (good,) = queue.add([{"party": "Note"}])
    scheduler = make_scheduler(workers=1)
    assert scheduler.run(until_idle=True) == 0
    failed = queue.get(ghost.id)
    assert failed.status == Status.FAILED and failed.last_error["type"] == "UnknownHandler"
    assert queue.get(good.id).status == Status.COMPLETED


def test_graceful_stop_hands_back_unfinished_tasks_without_spending_an_attempt(env, tmp_path):
    queue, clock, make_scheduler = env
    log = tmp_path / "log"
    tasks = queue.add([{"party": "Sleepy", "data": {"seconds": 30, "log": str(log)}}] * 3)
    scheduler = make_scheduler(workers=1, grace=0.3, max_depth=4)
    for _ in range(3):
        scheduler.tick()  # the first claims one; under the backlog the rest are prefetched
    wait_for_lines(log, 1)
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
    scheduler.tick()
    wait_for_lines(log, 1)
    scheduler.stop_requested = True
    assert scheduler.run() == 0
    assert queue.get(task.id).status == Status.COMPLETED


def test_abort_kills_workers_at_once_and_leaves_leases_to_recovery(env):
    queue, clock, make_scheduler = env
    (task,) = queue.add([{"party": "Sleepy", "data": {"seconds": 30}}])
    scheduler = make_scheduler()
    scheduler.tick()
    scheduler.abort_requested = True
    assert scheduler.run() == 1
    stored = queue.get(task.id)
    assert stored.status == Status.RUNNING and stored.lease is not None
    assert scheduler.pool.pids == []
