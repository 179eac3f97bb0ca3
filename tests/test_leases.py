"""The lease keeper of a worker, stepped with an injected time on a real SQLite file.

What a worker cannot keep it does not run: these prove the keeper renews what the worker holds,
ends the worker when a running task's lease is lost, refuses to start a run on a lease that ran
low, hands back what waits behind a long run, and fails an overrun nobody killed.
"""

import time
from datetime import timedelta

import pytest

from party.model import Status
from party.pool.leases import HOLD_BEHIND, LEASE_LOST_EXIT, OVERRUN_GRACE, Leases
from party.pool.messages import RELEASED
from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now

LEASE = 30.0


@pytest.fixture
def keeper(tmp_path, registry):
    """(queue, leases, exits): a keeper over a second connection to the queue's file, whose
    'exit' is recorded instead of ending the test process."""
    path = tmp_path / "leases.db"
    store = SqliteStore(path)
    queue = TaskQueue(store, registry, lease_seconds=LEASE)
    exits = []
    leases = Leases(
        lambda: TaskQueue(SqliteStore(path), registry, lease_seconds=LEASE),
        registry,
        LEASE,
        exit=exits.append,
    )
    yield queue, leases, exits
    leases.close()
    store.close()


def test_renewal_extends_the_lease_of_every_task_held(keeper):
    queue, leases, exits = keeper
    tasks = queue.add([{"party": "Noop"}, {"party": "Noop"}])
    claimed = queue.claim(2)
    now = time.monotonic()
    for seq, task in enumerate(claimed, 1):
        leases.hold([(seq, task)], now)
    before = [queue.get(t.id).lease_expires for t in tasks]
    time.sleep(0.01)
    leases.tick(now + LEASE)  # a renewal is due
    after = [queue.get(t.id).lease_expires for t in tasks]
    assert all(a > b for a, b in zip(after, before, strict=True)) and exits == []


def test_a_running_task_whose_lease_was_taken_ends_the_worker(keeper):
    queue, leases, exits = keeper
    queue.add([{"party": "Noop"}])
    (task,) = queue.claim(1)
    leases.hold([(1, task)], time.monotonic())
    assert leases.begin(1) == (True, None)
    # Another scheduler recovered the task after the lease ran out (as after a long stall).
    later = system_now() + timedelta(seconds=LEASE + 1)
    assert len(queue.recover_expired(now=later)) == 1
    leases.tick(time.monotonic() + LEASE)
    assert exits == [LEASE_LOST_EXIT]


def test_a_run_does_not_start_on_a_lease_that_ran_low(keeper):
    queue, leases, exits = keeper
    queue.add([{"party": "Noop"}])
    (task,) = queue.claim(1)
    # Claimed long enough ago that less than a third of the lease is left, never renewed.
    leases.hold([(1, task)], time.monotonic() - LEASE * 0.8)
    assert leases.begin(1) == (False, None)


def test_prefetched_tasks_waiting_behind_a_long_run_are_handed_back(keeper):
    queue, leases, exits = keeper
    queue.add([{"party": "Noop", "data": {"n": i}} for i in range(3)])
    claimed = queue.claim(3)
    now = time.monotonic()
    for seq, task in enumerate(claimed, 1):
        leases.hold([(seq, task)], now)
    assert leases.begin(1) == (True, None)
    leases.tick(time.monotonic() + HOLD_BEHIND / 2)
    assert queue.get(claimed[1].id).status == Status.RUNNING  # not yet: the run is short so far
    leases.tick(time.monotonic() + HOLD_BEHIND + 0.1)
    for task in claimed[1:]:
        stored = queue.get(task.id)
        assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)
    assert leases.begin(2) == (False, RELEASED) and leases.begin(3) == (False, RELEASED)
    assert queue.get(claimed[0].id).status == Status.RUNNING and exits == []


def test_an_overrun_nobody_killed_is_failed_by_its_own_worker(keeper):
    queue, leases, exits = keeper
    (task,) = queue.add([{"party": "Hangs"}])  # timeout = 1 s
    (claimed,) = queue.claim(1)
    leases.hold([(1, claimed)], time.monotonic())
    assert leases.begin(1) == (True, None)
    leases.tick(time.monotonic() + 1 + OVERRUN_GRACE + 0.1)
    stored = queue.get(task.id)
    assert stored.status == Status.QUEUED and stored.last_error["type"] == "Timeout"
    assert exits == [LEASE_LOST_EXIT]
