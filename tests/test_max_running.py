"""``max_running``: the claim passes over a handler at its cap, atomically, on every store; the
others' tasks keep their queue order; force-run ignores the cap; the cap outlives a lost lease."""

from datetime import timedelta
from pathlib import Path

import pytest

from party.errors import RegistryError
from party.model import Status
from party.queue import TaskQueue
from party.registry import Registry, discover, running_limits
from tests.conftest import Clock

LIMITED = Path(__file__).parent / "limited_handlers"


@pytest.fixture(scope="module")
def limited_registry():
    return discover([str(LIMITED)])


@pytest.fixture
def lq(store, limited_registry, clock):
    return TaskQueue(store, limited_registry, lease_seconds=60, clock=clock)


def _add(queue, clock, *parties):
    """One task per name, a microsecond apart, in this order."""
    tasks = []
    for i, party in enumerate(parties):
        tasks += queue.add([{"party": party, "timestamp": clock.now - timedelta(seconds=60 - i)}])
    return tasks


def test_limits_come_from_the_handlers_max_running(limited_registry):
    assert running_limits(limited_registry) == {"OneAtATime": 1, "TwoAtATime": 2, "Dies": 1}


def test_a_bad_max_running_is_refused_naming_the_handler():
    registry = Registry()
    registry.register(type("Bad", (__import__("party").TaskBase,), {"max_running": 0}))
    with pytest.raises(RegistryError, match="Bad: max_running must be an integer >= 1"):
        running_limits(registry)


def test_claim_takes_no_more_than_max_running_and_the_rest_flows(lq, clock):
    tasks = _add(lq, clock, "OneAtATime", "OneAtATime", "Free", "TwoAtATime", "TwoAtATime",
                 "TwoAtATime", "Free")  # fmt: skip
    got = lq.claim(10)
    assert [t.id for t in got] == [tasks[i].id for i in (0, 2, 3, 4, 6)]
    assert lq.claim(10) == []  # both capped handlers are at their cap, nothing else is due
    lq.store.update(_done(got[0]))  # the running OneAtATime ends
    assert [t.id for t in lq.claim(10)] == [tasks[1].id]


def _done(task):
    from party.model import Write

    return Write(task.id, {"status": Status.COMPLETED, "lease": None}, lease=task.lease)


def test_a_capped_handler_at_the_head_does_not_block_the_queue_behind_it(lq, clock):
    limited = lq.add([{"party": "OneAtATime", "timestamp": clock.now - timedelta(hours=1)}] * 120)
    free = _add(lq, clock, *["Free"] * 20)
    first = lq.claim(5)
    assert [t.party for t in first] == ["OneAtATime", "Free", "Free", "Free", "Free"]
    assert first[0].id == limited[0].id
    rest = lq.claim(100)
    assert [t.id for t in first[1:] + rest] == [t.id for t in free]  # queue order among them


def test_the_cap_counts_the_runs_of_every_claimer(store, limited_registry, clock):
    queues = [TaskQueue(store, limited_registry, clock=clock) for _ in range(3)]
    queues[0].add([{"party": "TwoAtATime"}] * 10)
    taken = [t for q in queues for t in q.claim(5)]
    assert len(taken) == 2
    assert queues[0].stats()["parties"]["TwoAtATime"] == {
        "running": 2,
        "queued": 8,
    }


def test_force_run_ignores_the_cap(lq, clock):
    a, b = _add(lq, clock, "OneAtATime", "OneAtATime")
    assert [t.id for t in lq.claim(5)] == [a.id]
    assert lq.claim_now(b.id).status == Status.RUNNING
    assert lq.claim(5) == []


def test_a_lost_lease_frees_its_place_once_recovered_and_not_before(lq, clock):
    a, b = _add(lq, clock, "OneAtATime", "OneAtATime")
    (held,) = lq.claim(5)
    clock.advance(seconds=61)  # the lease expired: its holder is gone, but it still counts
    assert lq.claim(5) == []
    recovered = lq.recover_expired()
    assert [t.id for t in recovered] == [held.id]
    (again,) = lq.claim(5)  # the recovered task, back at the head (its timestamp is older)
    assert again.id == a.id and again.attempts == 2
    assert lq.claim(5) == []


def test_without_limits_the_claim_is_the_plain_one(store, registry, clock):
    queue = TaskQueue(store, registry, clock=clock)
    assert queue.limits == {}
    queue.add([{"party": "Noop"}] * 3)
    assert len(queue.claim(10)) == 3


def test_waiting_says_limited_for_a_due_task_behind_its_cap(store, limited_registry):
    Views = pytest.importorskip("party.views").Views
    clock = Clock(__import__("party").system_now())
    queue = TaskQueue(store, limited_registry, clock=clock)
    a, b = queue.add([{"party": "OneAtATime"}] * 2)
    clock.advance(seconds=1)  # past MongoDB's rounding of the timestamps up to the millisecond
    queue.claim(5)
    views = Views(store, limited_registry, clock=clock)
    store.beat({"id": "s1", "handlers": ["OneAtATime"], "running": []}, clock.now)
    found = views.live().waiting(queue.get(b.id))
    assert found["reason"] == "limited" and "max_running of 1" in found["detail"]
