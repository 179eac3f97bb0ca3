"""Next slots of declared schedules (party.schedule), pure and with the clock passed in: cron in a
time zone across both changes of daylight saving time of a year, aliases and names, intervals on a
fixed cadence, and what a handler class may declare."""

from datetime import datetime, timedelta

import pytest

import party.handler
from party.errors import RegistryError
from party.handler import TaskBase
from party.model import Task
from party.registry import Registry
from party.schedule import Declaration, ScheduleError, declare, next_cron, next_every


def utc(*args):
    return datetime(*args)


def slots(expr, start, tz, n):
    out, at = [], start
    for _ in range(n):
        at = next_cron(expr, at, tz)
        out.append(at)
    return out


# -- Europe/Berlin, CET/CEST: 2025-03-30 02:00 -> 03:00, 2025-10-26 03:00 -> 02:00


def test_berlin_spring_forward_time_that_does_not_exist_runs_at_the_first_valid_instant():
    # 02:30 does not exist on 2025-03-30: it runs at 03:00 CEST (01:00 UTC), then 02:30 CEST again.
    assert slots("30 2 * * *", utc(2025, 3, 29, 12), "Europe/Berlin", 3) == [
        utc(2025, 3, 30, 1, 0),
        utc(2025, 3, 31, 0, 30),
        utc(2025, 4, 1, 0, 30),
    ]


def test_berlin_fall_back_time_that_exists_twice_runs_once():
    # 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET): one run, the first.
    assert slots("30 2 * * *", utc(2025, 10, 25, 12), "Europe/Berlin", 3) == [
        utc(2025, 10, 26, 0, 30),
        utc(2025, 10, 27, 1, 30),
        utc(2025, 10, 28, 1, 30),
    ]


def test_berlin_slot_just_run_in_the_repeated_hour_is_not_run_again():
    first = next_cron("30 2 * * *", utc(2025, 10, 25, 12), "Europe/Berlin")
    # The second 02:30 (01:30 UTC) lies after the slot just run, but it is the same local time.
    assert next_cron("30 2 * * *", first, "Europe/Berlin") == utc(2025, 10, 27, 1, 30)
    assert next_cron("30 2 * * *", utc(2025, 10, 26, 1, 0), "Europe/Berlin") == utc(
        2025, 10, 27, 1, 30
    )


def test_berlin_daily_nine_stays_at_nine_local_across_both_changes():
    spring = slots("0 9 * * *", utc(2025, 3, 28, 12), "Europe/Berlin", 3)
    assert spring == [utc(2025, 3, 29, 8), utc(2025, 3, 30, 7), utc(2025, 3, 31, 7)]
    autumn = slots("0 9 * * *", utc(2025, 10, 24, 12), "Europe/Berlin", 3)
    assert autumn == [utc(2025, 10, 25, 7), utc(2025, 10, 26, 8), utc(2025, 10, 27, 8)]


# -- America/New_York, EST/EDT: 2025-03-09 02:00 -> 03:00, 2025-11-02 02:00 -> 01:00


def test_new_york_spring_forward_time_that_does_not_exist_runs_at_the_first_valid_instant():
    assert slots("30 2 * * *", utc(2025, 3, 8, 12), "America/New_York", 3) == [
        utc(2025, 3, 9, 7, 0),  # 03:00 EDT
        utc(2025, 3, 10, 6, 30),  # 02:30 EDT
        utc(2025, 3, 11, 6, 30),
    ]


def test_new_york_fall_back_time_that_exists_twice_runs_once():
    # 01:30 happens at 05:30 UTC (EDT) and at 06:30 UTC (EST).
    assert slots("30 1 * * *", utc(2025, 11, 1, 12), "America/New_York", 3) == [
        utc(2025, 11, 2, 5, 30),
        utc(2025, 11, 3, 6, 30),
        utc(2025, 11, 4, 6, 30),
    ]


def test_new_york_daily_nine_stays_at_nine_local_across_both_changes():
    spring = slots("0 9 * * *", utc(2025, 3, 7, 20), "America/New_York", 3)
    assert spring == [utc(2025, 3, 8, 14), utc(2025, 3, 9, 13), utc(2025, 3, 10, 13)]
    autumn = slots("0 9 * * *", utc(2025, 10, 31, 20), "America/New_York", 3)
    assert autumn == [utc(2025, 11, 1, 13), utc(2025, 11, 2, 14), utc(2025, 11, 3, 14)]


def test_hourly_keeps_every_real_hour_across_a_change():
    # An expression whose hour field is a star runs each real hour (Debian cron): the repeated hour
    # of a fall-back day is another hour, not the same time twice.
    got = slots("@hourly", utc(2025, 10, 25, 23, 30), "Europe/Berlin", 4)
    assert got == [utc(2025, 10, 26, h) for h in range(0, 4)]


# -- expressions -------------------------------------------------------------------------------


def test_weekday_names_and_ranges():
    # 2025-03-28 is a Friday: the next weekday 09:00 UTC after Friday noon is Monday.
    assert next_cron("0 9 * * MON-FRI", utc(2025, 3, 28, 12)) == utc(2025, 3, 31, 9)
    assert next_cron("0 9 * * mon-fri", utc(2025, 3, 28, 8)) == utc(2025, 3, 28, 9)


@pytest.mark.parametrize(
    "alias, after, expected",
    [
        ("@hourly", utc(2025, 1, 1, 10, 5), utc(2025, 1, 1, 11)),
        ("@daily", utc(2025, 1, 1, 10), utc(2025, 1, 2)),
        ("@weekly", utc(2025, 1, 1, 10), utc(2025, 1, 5)),  # Sunday
        ("@monthly", utc(2025, 1, 1, 10), utc(2025, 2, 1)),
        ("@yearly", utc(2025, 1, 1, 10), utc(2026, 1, 1)),
    ],
)
def test_aliases(alias, after, expected):
    assert next_cron(alias, after) == expected


def test_next_is_strictly_after():
    assert next_cron("0 9 * * *", utc(2025, 1, 1, 9)) == utc(2025, 1, 2, 9)
    assert next_cron("0 9 * * *", utc(2025, 1, 1, 8, 59, 59, 999999)) == utc(2025, 1, 1, 9)


@pytest.mark.parametrize(
    "expr", ["", "* * * *", "61 * * * *", "0 9 * * FUNDAY", "@sometimes", "0 0 30 2 *", 7]
)
def test_bad_expressions_are_refused_naming_the_expression(expr):
    with pytest.raises(ScheduleError) as info:
        next_cron(expr, utc(2025, 1, 1))
    if isinstance(expr, str) and expr:
        assert repr(expr) in str(info.value)


def test_unknown_time_zone_is_refused():
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        next_cron("0 9 * * *", utc(2025, 1, 1), "Mars/Olympus")


# -- intervals ---------------------------------------------------------------------------------


def test_every_keeps_its_cadence_and_skips_missed_slots():
    slot = utc(2025, 1, 1, 12)
    step = timedelta(seconds=30)
    assert next_every(slot, step, utc(2025, 1, 1, 12, 0, 1)) == utc(2025, 1, 1, 12, 0, 30)
    # Three slots missed: the next one in the future, not the three.
    assert next_every(slot, step, utc(2025, 1, 1, 12, 1, 40)) == utc(2025, 1, 1, 12, 2)
    assert next_every(slot, step, utc(2025, 1, 1, 12, 0, 30)) == utc(2025, 1, 1, 12, 1)


def test_declaration_slots():
    cron = Declaration("30 2 * * *", None, "Europe/Berlin")
    now = utc(2025, 3, 29, 12)
    assert cron.first(now) == utc(2025, 3, 30, 1)
    # Run late: the next slot lies after now, missed ones are not replayed.
    assert cron.after(utc(2025, 3, 30, 1), utc(2025, 4, 2, 12)) == utc(2025, 4, 3, 0, 30)
    every = Declaration(None, 2.0, "UTC")
    assert every.first(now) == now
    assert every.after(now, now + timedelta(seconds=7)) == now + timedelta(seconds=8)
    assert every.moved(now, now + timedelta(seconds=3)) == now + timedelta(seconds=4)
    assert every.moved(None, now) == now + timedelta(seconds=2)


def test_declare_checks_and_marks():
    assert declare() is None
    assert declare("0  9 * * MON-FRI", timezone="Europe/Berlin").text == (
        "cron 0 9 * * MON-FRI Europe/Berlin"
    )
    assert declare(every=timedelta(minutes=1)).text == "every 60s"
    assert declare(every=2, data={"a": 1}).data == {"a": 1}
    assert declare(every=60).text != declare(every=2).text
    for bad in (
        {"schedule": "@daily", "every": 5},
        {"every": 0},
        {"every": "30"},
        {"every": True},
        {"schedule": "@daily", "timezone": "Nowhere/Else"},
        {"schedule": "@daily", "data": [1]},
    ):
        with pytest.raises(ScheduleError):
            declare(**bad)


# -- handler classes ---------------------------------------------------------------------------


def _task(timestamp, party="Declared"):
    return Task(id="0" * 24, party=party, data={}, timestamp=timestamp, created=timestamp,
                run_at=timestamp, is_recurring=True)  # fmt: skip


def test_a_declared_schedule_makes_a_handler_recurring_and_queues_its_next_slot(monkeypatch):
    class Declared(TaskBase):
        schedule = "0 9 * * MON-FRI"
        timezone = "Europe/Berlin"

        def run(self):
            return None

    class Plain(TaskBase):
        def run(self):
            return None

    assert Declared.is_recurring and not Plain.is_recurring
    assert Declared.declaration().text == "cron 0 9 * * MON-FRI Europe/Berlin"
    assert Plain.declaration() is None
    monkeypatch.setattr(party.handler, "system_now", lambda: utc(2025, 3, 28, 8, 0, 5))
    handler = Declared(_task(utc(2025, 3, 28, 8)))  # Friday 09:00 Berlin
    handler.on_complete(None)
    assert handler._next_run == utc(2025, 3, 31, 7)  # Monday 09:00 CEST
    plain = Plain(_task(utc(2025, 3, 28, 8), "Plain"))
    plain.on_complete(None)
    assert plain._next_run is None


def test_schedule_next_run_takes_cron(monkeypatch):
    class Monthly(TaskBase):
        timezone = "America/New_York"

        def run(self):
            return None

    monkeypatch.setattr(party.handler, "system_now", lambda: utc(2025, 3, 1, 5, 0, 1))
    handler = Monthly(_task(utc(2025, 3, 1, 5), "Monthly"))  # 00:00 EST on the 1st
    assert handler.schedule_next_run(cron="@monthly") == utc(2025, 4, 1, 4)  # 00:00 EDT
    with pytest.raises(ValueError, match="exactly one"):
        handler.schedule_next_run(minutes=5, cron="@daily")
    with pytest.raises(ValueError, match="bad cron"):
        handler.schedule_next_run(cron="every day")


def test_registry_refuses_a_bad_declaration_naming_handler_and_expression():
    class Broken(TaskBase):
        schedule = "0 25 * * *"

        def run(self):
            return None

    with pytest.raises(RegistryError) as info:
        Registry().register(Broken)
    assert "Broken" in str(info.value) and "'0 25 * * *'" in str(info.value)
    registry = Registry({"Broken": Broken})
    with pytest.raises(RegistryError, match="Broken"):
        registry.declarations()
