from datetime import datetime, timedelta

import pytest

from party import TaskBase, system_now
from party.handler import FollowUps
from party.model import Task


class Recurring(TaskBase):
    is_recurring = True


def task_at(timestamp, **fields):
    return Task(id="a" * 24, party="Recurring", data=fields.pop("data", {}), timestamp=timestamp,
                created=timestamp, run_at=timestamp, **fields)  # fmt: skip


def test_run_time_attributes_come_from_the_task():
    ts = datetime(2014, 3, 11, 5, 12, 22, 86400)
    last = ts - timedelta(days=1)
    h = Recurring(task_at(ts, data={"arg1": "val1"}, attempts=2, last_run_on=last))
    assert (h._id, h.timestamp, h.last_run_on, h.attempts) == ("a" * 24, ts, last, 2)
    assert h.data == {"arg1": "val1"} and h.is_recurring is True
    assert TaskBase.max_attempts == 6 and TaskBase.retry_delay == 0 and TaskBase.timeout is None


def test_schedule_next_run_minutes_keeps_cadence_and_skips_missed_slots():
    now = system_now()
    ts = now - timedelta(minutes=95, seconds=1)  # slots at +30, +60, +90 have passed
    h = Recurring(task_at(ts))
    assert h.schedule_next_run(minutes=30) == ts + timedelta(minutes=120)


def test_schedule_next_run_minutes_when_on_time_is_one_step_ahead():
    ts = system_now()
    h = Recurring(task_at(ts))
    assert h.schedule_next_run(minutes=30) == ts + timedelta(minutes=30)


def test_schedule_next_run_accepts_fractional_minutes():
    ts = system_now() - timedelta(seconds=7)
    nxt = Recurring(task_at(ts)).schedule_next_run(minutes=0.05)  # every 3 s
    assert nxt == ts + timedelta(seconds=9)


def test_schedule_next_run_timestamp_is_exact():
    ts = datetime(2014, 3, 11)
    h = Recurring(task_at(ts))
    assert h.schedule_next_run(timestamp=ts + timedelta(days=30)) == datetime(2014, 4, 10)
    assert h._next_run == datetime(2014, 4, 10)


@pytest.mark.parametrize("kwargs", [{}, {"minutes": 1, "timestamp": datetime(2014, 1, 1)}])
def test_schedule_next_run_needs_exactly_one_argument(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        Recurring(task_at(system_now())).schedule_next_run(**kwargs)


@pytest.mark.parametrize("minutes", [0, -5, "30", True])
def test_schedule_next_run_refuses_non_positive_minutes(minutes):
    with pytest.raises(ValueError, match="positive number"):
        Recurring(task_at(system_now())).schedule_next_run(minutes=minutes)


@pytest.mark.parametrize("minutes", [1e-9, 1e12, float("inf")])
def test_schedule_next_run_refuses_minutes_no_timedelta_can_step_by(minutes):
    with pytest.raises(ValueError, match="from a microsecond to 1,000 years"):
        Recurring(task_at(system_now())).schedule_next_run(minutes=minutes)


def test_retry_delay_may_be_a_callable_of_attempts():
    class Backoff(TaskBase):
        retry_delay = staticmethod(lambda attempts: 2**attempts)

    assert Backoff.retry_delay_for(3) == 8
    assert TaskBase.retry_delay_for(3) == 0


def test_follow_ups_record_what_on_complete_adds():
    tasks = FollowUps()
    tasks.add("Noop")
    tasks.add("Noop", data={"a": 1}, timestamp="2030-01-01T00:00:00Z")
    assert [(t.party, t.data, t.timestamp) for t in tasks.added] == [
        ("Noop", {}, None),
        ("Noop", {"a": 1}, datetime(2030, 1, 1)),
    ]


def test_run_must_be_defined():
    with pytest.raises(NotImplementedError):
        TaskBase(task_at(system_now())).run()
