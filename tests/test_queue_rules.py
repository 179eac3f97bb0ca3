"""Every rule of PRODUCT.md "Semantics of the queue", once per store (sqlite, mongomock, mongo)."""

import json
import logging
from datetime import datetime, timedelta

import pytest

from party.errors import Conflict, NotFound, ValidationError
from party.model import NewTask, Outcome, Status
from party.queue import TaskQueue
from party.runner import execute, run_task


def drain(queue, limit=100):
    """Claim and run everything due now, in claim order; return the ids run."""
    ran = []
    while True:
        claimed = queue.claim(limit)
        if not claimed:
            return ran
        for task in claimed:
            execute(queue, task)
            ran.append(task.id)


# -- order -------------------------------------------------------------------------------------


def test_claim_order_is_timestamp_then_attempts_then_created(queue, clock):
    now = clock.now
    late = queue.add([{"party": "Noop", "timestamp": now - timedelta(seconds=1)}])[0]
    early = queue.add([{"party": "Noop", "timestamp": now - timedelta(seconds=10)}])[0]
    # Two tasks at one timestamp: the one with fewer attempts first, whatever the creation order.
    retried = queue.add([{"party": "FlakyTwice", "timestamp": now - timedelta(seconds=5)}])[0]
    clock.advance(seconds=1)
    fresh_a = queue.add([{"party": "Noop", "timestamp": now - timedelta(seconds=5)}])[0]
    fresh_b = queue.add([{"party": "Noop", "timestamp": now - timedelta(seconds=5)}])[0]
    (first,) = queue.claim(1)
    assert first.id == early.id
    execute(queue, first)
    (second,) = queue.claim(1)
    assert second.id == retried.id
    execute(queue, second)  # fails: back in the queue with attempts 1
    order = [t.id for t in queue.claim(10)]
    assert order == [fresh_a.id, fresh_b.id, retried.id, late.id]


def test_task_scheduled_in_the_future_is_not_claimed_until_due(queue, clock):
    task = queue.add([{"party": "Noop", "timestamp": clock.now + timedelta(minutes=5)}])[0]
    assert queue.claim(10) == []
    assert queue.next_run_at() == task.timestamp
    clock.advance(minutes=5)
    assert [t.id for t in queue.claim(10)] == [task.id]


def test_claim_takes_at_most_limit_and_counts_an_attempt(queue):
    queue.add([{"party": "Noop"} for _ in range(5)])
    claimed = queue.claim(3)
    assert len(claimed) == 3
    assert all(t.status == Status.RUNNING and t.attempts == 1 and t.lease for t in claimed)
    assert len(queue.claim(10)) == 2


# -- completion, deletion ----------------------------------------------------------------------


def test_completed_task_is_never_run_again(queue):
    task = queue.add([{"party": "Noop", "data": {"return": [1, "a"]}}])[0]
    assert drain(queue) == [task.id]
    done = queue.get(task.id)
    assert done.status == Status.COMPLETED and done.attempts == 1 and done.result == [1, "a"]
    assert done.started_on and done.completed_on and done.lease is None
    assert queue.claim(10) == []
    with pytest.raises(Conflict, match="completed"):
        queue.claim_now(task.id)
    with pytest.raises(Conflict, match="completed"):
        queue.delete(task.id)


def test_deleted_task_is_never_claimed(queue):
    task = queue.add([{"party": "Noop"}])[0]
    assert queue.delete(task.id).status == Status.DELETED
    assert queue.delete(task.id).status == Status.DELETED  # idempotent
    assert queue.claim(10) == []
    with pytest.raises(Conflict, match="deleted"):
        queue.claim_now(task.id)


def test_task_deleted_while_running_keeps_its_result_and_stays_deleted(queue):
    task = queue.add([{"party": "Noop", "data": {"return": "r"}}])[0]
    (claimed,) = queue.claim(1)
    queue.delete(task.id)
    _, status = execute(queue, claimed)
    assert status == Status.DELETED
    after = queue.get(task.id)
    assert after.status == Status.DELETED and after.result == "r" and after.lease is None


def test_failing_task_deleted_while_running_is_not_retried(queue):
    task = queue.add([{"party": "Boom"}])[0]
    (claimed,) = queue.claim(1)
    queue.delete(task.id)
    execute(queue, claimed)
    after = queue.get(task.id)
    assert after.status == Status.DELETED and after.last_error["type"] == "RuntimeError"
    assert queue.claim(10) == []


def test_unknown_and_malformed_ids_are_told_apart(queue):
    with pytest.raises(NotFound):
        queue.get("0" * 24)
    with pytest.raises(ValidationError, match="24 lowercase hex"):
        queue.get("not-an-id")
    with pytest.raises(NotFound):
        queue.delete("0" * 24)


# -- failure, attempts, retries ----------------------------------------------------------------


def test_sixth_failure_marks_task_failed(queue):
    task = queue.add([{"party": "Boom"}])[0]
    for attempt in range(1, 7):
        (claimed,) = queue.claim(10)
        assert claimed.attempts == attempt
        _, status = execute(queue, claimed)
        assert status == (Status.FAILED if attempt == 6 else Status.QUEUED)
    failed = queue.get(task.id)
    assert failed.status == Status.FAILED and failed.attempts == 6
    assert failed.last_error["type"] == "RuntimeError"
    assert "boom on attempt 6" in failed.last_error["message"]
    assert "Traceback" in failed.last_error["traceback"] and failed.last_error["at"]
    assert queue.claim(10) == []
    with pytest.raises(Conflict, match="failed"):
        queue.claim_now(task.id)


def test_retry_keeps_timestamp_and_waits_for_retry_delay(queue, clock):
    task = queue.add([{"party": "SlowRetry"}])[0]
    (claimed,) = queue.claim(1)
    execute(queue, claimed)
    retried = queue.get(task.id)
    assert retried.status == Status.QUEUED and retried.timestamp == task.timestamp
    assert queue.claim(10) == []
    clock.advance(seconds=29)
    assert queue.claim(10) == []
    clock.advance(seconds=2)
    assert [t.id for t in queue.claim(10)] == [task.id]


def test_handler_max_attempts_is_honoured(queue, clock):
    task = queue.add([{"party": "SlowRetry"}])[0]  # max_attempts = 3
    for _ in range(3):
        clock.advance(seconds=31)
        (claimed,) = queue.claim(1)
        execute(queue, claimed)
    assert queue.get(task.id).status == Status.FAILED


def test_flaky_task_succeeds_on_third_attempt(queue):
    task = queue.add([{"party": "FlakyTwice"}])[0]
    assert drain(queue) == [task.id] * 3
    done = queue.get(task.id)
    assert done.status == Status.COMPLETED and done.attempts == 3 and done.result == "ok"


def test_a_claim_hands_back_tasks_whose_handler_is_missing_and_then_passes_them_over(
    queue, clock, caplog
):
    from party.registry import Registry

    noop, boom = queue.add([{"party": "Noop"}, {"party": "Boom"}])
    partial = TaskQueue(queue.store, Registry({"Boom": queue.registry.get("Boom")}), clock=clock)
    with caplog.at_level(logging.WARNING, logger="party.queue"):
        assert [t.id for t in partial.claim(10)] == [boom.id]
    assert "tasks of handler 'Noop' are left queued" in caplog.text
    left = queue.get(noop.id)
    assert (left.status, left.attempts, left.lease) == (Status.QUEUED, 0, None)
    assert partial.claim(10) == []  # passed over now, without a claim and a hand-back each time
    assert partial.next_run_at() is None  # its idle workers sleep instead of waking for it
    assert queue.next_run_at() == left.timestamp
    assert [t.id for t in queue.claim(10)] == [noop.id]  # a process with the handler takes it


def test_a_run_of_a_handler_missing_at_run_time_fails_at_once(queue):
    from party.registry import Registry

    task = queue.add([{"party": "Noop"}])[0]
    (claimed,) = queue.claim(1)
    outcome = run_task(claimed, Registry())
    assert outcome.permanent and "no handler named 'Noop'" in outcome.error["message"]
    assert queue.record([outcome]) == [Status.FAILED]
    assert queue.get(task.id).status == Status.FAILED


def test_an_error_message_with_a_lone_surrogate_is_stored_escaped_and_reads_back(queue):
    task = queue.add([{"party": "BoomUndecodable"}])[0]
    (claimed,) = queue.claim(1)
    assert queue.record([run_task(claimed, queue.registry)]) == [Status.FAILED]
    error = queue.get(task.id).last_error
    assert error["message"] == "cannot read caf\\udce9.txt"
    assert "caf\\udce9.txt" in error["traceback"]
    json.dumps(error).encode()  # what the answer of GET /task/<id> does


# -- recurring ---------------------------------------------------------------------------------


def test_recurring_task_is_requeued_with_last_run_on_and_attempts_reset(queue):
    task = queue.add([{"party": "Every5", "data": {"k": 1}}])[0]
    (claimed,) = queue.claim(1)
    outcome, status = execute(queue, claimed)
    assert status == Status.QUEUED
    again = queue.get(task.id)
    assert again.attempts == 0 and again.last_run_on == _stored(queue, outcome.started_on)
    assert again.timestamp > task.timestamp
    assert (again.timestamp - task.timestamp) % timedelta(minutes=5) == timedelta(0)
    assert again.is_recurring and again.lease is None


def test_recurring_task_without_next_run_completes_and_warns_once(queue, caplog):
    task = queue.add([{"party": "RecurringNoNext"}])[0]
    with caplog.at_level(logging.WARNING, logger="party.queue"):
        drain(queue)
    warnings = [r for r in caplog.records if "scheduled no next run" in r.getMessage()]
    assert len(warnings) == 1
    assert queue.get(task.id).status == Status.COMPLETED


def test_follow_up_tasks_are_added_after_completion(queue):
    parent = queue.add([{"party": "Spawner"}])[0]
    drain(queue)
    children = queue.list(party="Noop")
    assert [c.data for c in children] == [{"from": parent.id}]
    assert children[0].status == Status.COMPLETED


# -- singleton ---------------------------------------------------------------------------------


def test_second_live_recurring_task_with_same_data_is_refused(queue):
    queue.add([{"party": "Every5", "data": {"a": 1, "b": [1, 2]}}])
    with pytest.raises(Conflict, match="already queued or running"):
        queue.add(
            [{"party": "Every5", "data": {"b": [1, 2], "a": 1}}]
        )  # same data, other key order
    queue.add([{"party": "Every5", "data": {"a": 2}}])  # other data is fine
    assert len(queue.list(party="Every5")) == 2


def test_singleton_clash_within_one_batch_inserts_nothing(queue):
    with pytest.raises(Conflict) as info:
        queue.add([{"party": "Noop"}, {"party": "Every5"}, {"party": "Every5"}])
    assert info.value.index == 2
    assert queue.list() == []


def test_singleton_clash_in_batch_with_stored_task_inserts_nothing(queue):
    queue.add([{"party": "Every5"}])
    with pytest.raises(Conflict) as info:
        queue.add([{"party": "Noop"}, {"party": "Noop"}, {"party": "Every5"}])
    assert info.value.index == 2
    assert len(queue.list()) == 1


def test_recurring_task_can_be_added_again_once_the_first_ended(queue):
    first = queue.add([{"party": "Every5"}])[0]
    (claimed,) = queue.claim(1)  # running still counts as live
    with pytest.raises(Conflict):
        queue.add([{"party": "Every5"}])
    queue.release([claimed])
    queue.delete(first.id)
    second = queue.add([{"party": "Every5"}])[0]
    assert second.id != first.id


def test_one_off_tasks_with_same_data_are_not_singletons(queue):
    queue.add([{"party": "Noop", "data": {"x": 1}}, {"party": "Noop", "data": {"x": 1}}])
    assert len(queue.list()) == 2


# -- leases ------------------------------------------------------------------------------------


def test_expired_lease_is_recovered_and_costs_the_attempt(queue, clock):
    task = queue.add([{"party": "Noop"}])[0]
    (claimed,) = queue.claim(1)
    clock.advance(seconds=59)
    assert queue.recover_expired() == []
    clock.advance(seconds=2)
    assert [t.id for t in queue.recover_expired()] == [task.id]
    after = queue.get(task.id)
    assert after.status == Status.QUEUED and after.attempts == 1
    assert after.last_error["type"] == "LeaseExpired" and after.lease is None
    (again,) = queue.claim(1)
    assert again.attempts == 2 and again.lease != claimed.lease


def test_stale_run_cannot_overwrite_state_after_its_lease_was_recovered(queue, clock):
    task = queue.add([{"party": "Noop", "data": {"return": "stale"}}])[0]
    (stale,) = queue.claim(1)
    clock.advance(seconds=61)
    queue.recover_expired()
    (fresh,) = queue.claim(1)
    # The first run finishes late: its write is fenced off, whether success or failure.
    assert queue.record([run_task(stale, queue.registry)]) == [None]
    assert queue.fail(stale, {"type": "X", "message": "late"}) is None
    current = queue.get(task.id)
    assert current.status == Status.RUNNING and current.lease == fresh.lease
    assert queue.renew([stale]) == [False]
    assert queue.release([stale]) == [False]
    assert execute(queue, fresh)[1] == Status.COMPLETED


def test_renewed_lease_is_not_recovered(queue, clock):
    task = queue.add([{"party": "Noop"}])[0]
    (claimed,) = queue.claim(1)
    clock.advance(seconds=50)
    assert queue.renew([claimed]) == [True]
    clock.advance(seconds=50)
    assert queue.recover_expired() == []
    assert queue.get(task.id).status == Status.RUNNING


def test_sixth_expired_lease_fails_the_task(queue, clock):
    task = queue.add([{"party": "Noop"}])[0]
    for _ in range(6):
        queue.claim(1)
        clock.advance(seconds=61)
        queue.recover_expired()
    assert queue.get(task.id).status == Status.FAILED


def test_release_hands_task_back_without_spending_an_attempt(queue):
    task = queue.add([{"party": "Noop"}])[0]
    claimed = queue.claim(1)
    assert queue.release(claimed) == [True]
    back = queue.get(task.id)
    assert back.status == Status.QUEUED and back.attempts == 0 and back.lease is None
    assert [t.attempts for t in queue.claim(1)] == [1]


def test_force_run_claim_ignores_timestamp_but_not_status(queue, clock):
    task = queue.add([{"party": "Noop", "timestamp": clock.now + timedelta(days=1)}])[0]
    claimed = queue.claim_now(task.id)
    assert claimed.status == Status.RUNNING and claimed.attempts == 1
    with pytest.raises(Conflict, match="running"):
        queue.claim_now(task.id)
    execute(queue, claimed)
    assert queue.get(task.id).status == Status.COMPLETED


def test_failed_force_run_of_future_task_keeps_its_timestamp(queue, clock):
    future = clock.now + timedelta(days=1)
    task = queue.add([{"party": "Boom", "timestamp": future}])[0]
    execute(queue, queue.claim_now(task.id))
    after = queue.get(task.id)
    assert after.status == Status.QUEUED and after.timestamp == task.timestamp
    assert queue.claim(10) == []


# -- validation: a bad batch writes nothing ----------------------------------------------------


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"party": "Nope"}, "party", "unknown handler 'Nope'; known handlers: "),
        ({"data": {}}, "party", "'party' must be the name of a handler"),
        ({"party": 3}, "party", "'party' must be the name of a handler"),
        ({"party": "Noop", "data": [1]}, "data", "must be a JSON object"),
        ({"party": "Noop", "data": {"$set": 1}}, "data", "'$set' is not accepted"),
        ({"party": "Noop", "data": {"a": [{"$x": 1}]}}, "data", "'$x' is not accepted"),
        ({"party": "Noop", "data": {"a": [{1: "x"}]}}, "data", "key 1 is not accepted"),
        ({"party": "Noop", "data": {"a": (1, {2})}}, "data", "only JSON values"),
        ({"party": "Noop", "data": {"a": float("nan")}}, "data", "only JSON values"),
        ({"party": "Noop", "timestamp": "yesterday"}, "timestamp", "not an ISO 8601"),
        ({"party": "Noop", "timestamp": True}, "timestamp", "expected an ISO 8601"),
    ],
)
def test_batch_with_one_bad_item_inserts_nothing(queue, bad, field, message):
    with pytest.raises(ValidationError) as info:
        queue.add([{"party": "Noop"}, {"party": "Noop"}, bad])
    assert info.value.index == 2 and info.value.field == field
    assert message in str(info.value)
    assert queue.list() == []


def test_first_bad_item_is_named_whatever_is_wrong_with_later_ones(queue):
    batch = [{"party": "Noop"}, {"party": "Nope"}, {"party": "Noop", "data": {"$set": 1}}]
    with pytest.raises(ValidationError) as info:
        queue.add(batch)
    assert info.value.index == 1 and info.value.field == "party"
    with pytest.raises(ValidationError) as info:
        queue.add([NewTask("Noop", {"a": 1}), NewTask("Noop", {2: "b"})])
    assert info.value.index == 1 and info.value.field == "data"


def test_data_strings_that_only_look_like_operators_are_accepted(queue):
    data = {"query": "$set", "quoted": 'a"$b', "nested": [{"k": "$x"}]}
    (task,) = queue.add([{"party": "Noop", "data": data}])
    assert queue.get(task.id).data == data


def test_timestamps_in_every_accepted_form(queue):
    forms = [
        datetime(2014, 3, 11, 5, 12, 22, 86000),
        "2014-03-11T05:12:22.086",
        "2014-03-11T10:42:22.086+05:30",
        {"$date": "2014-03-11T05:12:22.086Z"},
        {"$date": 1394514742086},
        1394514742.086,
    ]
    tasks = queue.add([{"party": "Noop", "timestamp": f} for f in forms])
    assert {t.timestamp for t in tasks} == {datetime(2014, 3, 11, 5, 12, 22, 86000)}


def test_add_accepts_new_task_records(queue):
    (task,) = queue.add([NewTask("Noop", {"a": 1})])
    assert task.data == {"a": 1} and task.status == Status.QUEUED


# -- reading -----------------------------------------------------------------------------------


def test_list_pages_in_queue_order_and_filters(queue, clock):
    added = queue.add(
        [{"party": "Noop", "timestamp": clock.now - timedelta(seconds=i)} for i in range(7)]
    )
    queue.add([{"party": "Boom"}])
    expected = [t.id for t in reversed(added)]
    page1 = queue.list(party="Noop", limit=4)
    page2 = queue.list(party="Noop", limit=4, after=page1[-1].order_key)
    assert [t.id for t in page1 + page2] == expected
    assert [t.party for t in queue.list(status="queued")].count("Boom") == 1
    with pytest.raises(ValidationError, match="unknown status"):
        queue.list(status="done")
    with pytest.raises(ValidationError, match="limit"):
        queue.list(limit=0)


def test_stats_count_statuses_parties_and_due(queue, clock):
    queue.add([{"party": "Noop"}, {"party": "Noop"}, {"party": "Boom"}])
    queue.add([{"party": "Noop", "timestamp": clock.now + timedelta(hours=1)}])
    clock.advance(seconds=10)
    stats = queue.stats()
    assert stats["statuses"] == {
        "queued": 4, "running": 0, "completed": 0, "failed": 0, "deleted": 0
    }  # fmt: skip
    assert stats["parties"] == {"Noop": {"queued": 3}, "Boom": {"queued": 1}}
    assert stats["due"] == 3
    assert stats["oldest_due_seconds"] == pytest.approx(10, abs=0.01)
    drain(queue)
    stats = queue.stats()
    assert stats["statuses"]["completed"] == 2 and stats["due"] == 0
    assert stats["oldest_due_seconds"] is None


def _stored(queue, value):
    """What the store keeps of a time: microseconds on SQLite, milliseconds on MongoDB."""
    step = queue.store.precision_micros
    return value.replace(microsecond=value.microsecond - value.microsecond % step)


def test_outcome_of_a_run_keeps_started_and_completed_times(queue):
    task = queue.add([{"party": "Noop"}])[0]
    (claimed,) = queue.claim(1)
    outcome = run_task(claimed, queue.registry)
    assert isinstance(outcome, Outcome) and outcome.ok
    queue.record([outcome])
    done = queue.get(task.id)
    assert done.started_on == _stored(queue, outcome.started_on)
    assert done.completed_on == _stored(queue, outcome.finished_on)
