"""Every Store method, once per backend: the contract of party/stores/base.py."""

from datetime import datetime, timedelta

import pytest

from party.errors import Conflict
from party.model import Status, Task, Write, new_id

T0 = datetime(2030, 1, 1, 12, 0, 0)


def make(party="Noop", at=T0, **fields):
    return Task(id=new_id(), party=party, data=fields.pop("data", {}), timestamp=at, created=T0,
                run_at=fields.pop("run_at", at), **fields)  # fmt: skip


def test_insert_many_returns_tasks_as_stored_in_order(store):
    tasks = [make(data={"i": i}) for i in range(3)]
    stored = store.insert_many(tasks)
    assert [t.id for t in stored] == [t.id for t in tasks]
    assert store.get(tasks[1].id) == stored[1]
    assert store.get(new_id()) is None


def test_insert_many_keeps_every_field_of_new_and_of_run_tasks_in_one_batch(store):
    at = T0 + timedelta(seconds=1)
    run = make(data={"a": [1, {"b": None}]}, attempts=2, status=Status.RUNNING,
               is_recurring=True, last_run_on=at, started_on=at, completed_on=at,
               result={"r": 1.5}, last_error={"type": "E"}, lease="tok", lease_expires=at,
               singleton="k")  # fmt: skip
    batch = [make(data={"i": 1}), run, make(is_recurring=True), make(run_at=at), make()]
    store.insert_many(batch)
    assert [store.get(t.id) for t in batch] == batch


def test_insert_many_with_singleton_clash_inserts_nothing(store):
    store.insert_many([make(singleton="k1")])
    batch = [make(), make(singleton="k2"), make(singleton="k1"), make()]
    with pytest.raises(Conflict) as info:
        store.insert_many(batch)
    assert info.value.index == 2
    assert all(store.get(t.id) is None for t in batch)


def test_cleared_singleton_frees_the_key(store):
    task = make(singleton="k")
    store.insert_many([task])
    assert store.update(Write(task.id, {"singleton": None})) is not None
    store.insert_many([make(singleton="k")])


def test_claim_is_ordered_limited_and_leased(store):
    a = make(at=T0 - timedelta(seconds=3))
    b = make(at=T0 - timedelta(seconds=2), attempts=2)
    c = make(at=T0 - timedelta(seconds=2), attempts=1)
    future = make(at=T0 + timedelta(seconds=1))
    delayed = make(at=T0 - timedelta(seconds=9), run_at=T0 + timedelta(seconds=5))
    done = make(at=T0 - timedelta(seconds=9), status=Status.COMPLETED)
    store.insert_many([a, b, c, future, delayed, done])
    claimed = store.claim(2, T0, T0 + timedelta(seconds=60), "tok")
    assert [t.id for t in claimed] == [a.id, c.id]
    assert all(t.status == Status.RUNNING and t.lease == "tok" for t in claimed)
    assert [t.attempts for t in claimed] == [1, 2]
    assert [t.id for t in store.claim(10, T0, T0, "tok2")] == [b.id]
    assert store.claim(10, T0, T0, "tok3") == []


def test_claim_id_takes_only_a_queued_task(store):
    queued, running = make(at=T0 + timedelta(days=1)), make(status=Status.RUNNING)
    store.insert_many([queued, running])
    got = store.claim_id(queued.id, T0, "tok")
    assert got.status == Status.RUNNING and got.attempts == 1 and got.lease == "tok"
    assert store.claim_id(queued.id, T0, "tok2") is None
    assert store.claim_id(running.id, T0, "tok2") is None


def test_update_is_conditional_on_lease_and_status(store):
    task = make(status=Status.RUNNING, lease="tok")
    store.insert_many([task])
    assert store.update(Write(task.id, {"result": 1}, lease="other")) is None
    assert store.update(Write(task.id, {"result": 1}, statuses=(Status.QUEUED,))) is None
    after = store.update(
        Write(
            task.id, {"result": {"x": [1]}, "lease": None}, lease="tok", statuses=(Status.RUNNING,)
        )
    )
    assert after.result == {"x": [1]} and after.lease is None


def test_write_many_reports_which_writes_matched(store):
    a, b = make(status=Status.RUNNING, lease="ta"), make(status=Status.RUNNING, lease="tb")
    store.insert_many([a, b])
    matched = store.write_many(
        [
            Write(a.id, {"status": Status.COMPLETED}, lease="ta"),
            Write(b.id, {"attempts": 9}, lease="x"),
        ]
    )
    assert matched == [True, False]
    assert store.get(a.id).status == Status.COMPLETED and store.get(b.id).attempts == 0
    assert store.write_many([]) == []


def test_write_many_batch_writes_only_the_tasks_whose_lease_it_holds(store):
    # 70 completions, most of one shape (SQLite writes them in a few statements): held leases,
    # lost ones, a task deleted meanwhile and an unknown id, in one batch.
    tasks = [make(status=Status.RUNNING, lease=f"t{i}") for i in range(70)]
    tasks[7].status = Status.DELETED
    store.insert_many(tasks)
    held = [i % 3 != 0 and i != 7 for i in range(70)]

    def done(task_id, i, lease):
        result = None if i % 10 == 5 else {"i": i}  # a second shape: result cleared
        fields = {"status": Status.COMPLETED, "completed_on": T0, "result": result, "lease": None}
        return Write(task_id, fields, lease=lease, statuses=(Status.RUNNING,))

    writes = [done(t.id, i, t.lease if i % 3 else "lost") for i, t in enumerate(tasks)]
    writes.insert(30, done(new_id(), 99, "t0"))
    matched = store.write_many(writes)
    assert matched == held[:30] + [False] + held[30:]
    for i, task in enumerate(tasks):
        stored = store.get(task.id)
        if held[i]:
            assert stored.status == Status.COMPLETED and stored.lease is None
            assert stored.result == (None if i % 10 == 5 else {"i": i})
        else:
            assert stored == task


def test_write_many_applies_two_writes_to_one_task_in_turn(store):
    a, b = make(status=Status.RUNNING, lease="ta"), make(status=Status.RUNNING, lease="tb")
    store.insert_many([a, b])
    release = {"status": Status.QUEUED, "lease": None}
    writes = [Write(a.id, release, lease="ta"), Write(b.id, release, lease="tb")]
    writes.append(Write(a.id, {"status": Status.COMPLETED, "lease": None}, lease="ta"))
    assert store.write_many(writes) == [True, True, False]
    assert store.get(a.id).status == Status.QUEUED


def test_expired_lists_running_tasks_past_their_lease(store):
    old = make(status=Status.RUNNING, lease="a", lease_expires=T0 - timedelta(seconds=2))
    older = make(status=Status.RUNNING, lease="b", lease_expires=T0 - timedelta(seconds=5))
    alive = make(status=Status.RUNNING, lease="c", lease_expires=T0 + timedelta(seconds=5))
    deleted = make(status=Status.DELETED, lease="d", lease_expires=T0 - timedelta(seconds=5))
    store.insert_many([old, older, alive, deleted])
    assert [t.id for t in store.expired(T0)] == [older.id, old.id]


def test_next_run_at_is_earliest_run_at_of_queued_tasks(store):
    assert store.next_run_at() is None
    store.insert_many(
        [make(at=T0 + timedelta(seconds=9)), make(at=T0, run_at=T0 + timedelta(seconds=4))]
    )
    store.insert_many([make(at=T0 - timedelta(days=1), status=Status.FAILED)])
    assert store.next_run_at() == T0 + timedelta(seconds=4)


def test_next_run_at_leaves_out_the_handlers_it_is_told_to(store):
    ghost = make(at=T0 - timedelta(hours=1), party="Ghost")  # a handler this process lacks
    late_retry = make(at=T0 - timedelta(hours=2), run_at=T0 - timedelta(minutes=30), party="Ghost")
    store.insert_many([ghost, late_retry, make(at=T0 + timedelta(seconds=9))])
    assert store.next_run_at() == T0 - timedelta(hours=1)
    assert store.next_run_at(["Ghost"]) == T0 + timedelta(seconds=9)
    assert store.next_run_at(["Ghost", "Noop"]) is None


def test_next_run_at_looks_past_retries_waiting_at_the_head_of_the_queue(store):
    # Retries keep their place in queue order (their timestamp) while they wait for their delay.
    waiting = [
        make(at=T0 - timedelta(seconds=i), run_at=T0 + timedelta(minutes=5)) for i in range(5)
    ]
    store.insert_many([*waiting, make(at=T0 + timedelta(seconds=30))])
    assert store.next_run_at() == T0 + timedelta(seconds=30)
    store.insert_many([make(at=T0 - timedelta(hours=1), run_at=T0 + timedelta(seconds=2))])
    assert store.next_run_at() == T0 + timedelta(seconds=2)


def test_query_filters_and_pages_after_an_order_key(store):
    tasks = [make(at=T0 + timedelta(seconds=i), party="A" if i % 2 else "B") for i in range(6)]
    store.insert_many(tasks)
    assert [t.id for t in store.query(party="A")] == [t.id for t in tasks if t.party == "A"]
    page = store.query(limit=2, after=tasks[1].order_key)
    assert [t.id for t in page] == [tasks[2].id, tasks[3].id]
    assert store.query(status=Status.RUNNING) == []


def test_stats_counts_every_status(store):
    store.insert_many([make(), make(status=Status.FAILED), make(party="B", at=T0 + timedelta(1))])
    stats = store.stats(T0)
    assert stats["statuses"] == {
        "queued": 2,
        "running": 0,
        "completed": 0,
        "failed": 1,
        "deleted": 0,
    }
    assert stats["parties"] == {"Noop": {"queued": 1, "failed": 1}, "B": {"queued": 1}}
    assert stats["due"] == 1 and stats["oldest_due"] == T0


def test_ping_answers(store):
    store.ping()


def test_timestamps_are_never_rounded_down(store):
    fine = datetime(2030, 1, 1, 12, 0, 0, 123456)
    (stored,) = store.insert_many([make(at=fine)])
    assert stored.timestamp >= fine and stored.run_at >= fine
    assert store.get(stored.id).timestamp == stored.timestamp
    assert (stored.timestamp - fine) < timedelta(microseconds=store.precision_micros)


def test_check_writable_returns_on_a_healthy_store_and_leaves_the_tasks_alone(store):
    store.insert_many([make()])
    before = store.stats(T0)
    store.check_writable()
    store.check_writable()
    assert store.stats(T0) == before
