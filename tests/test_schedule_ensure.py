"""The ensure-schedules pass (party.scheduler.schedules) on every store, with a stepped clock: one
live task per declared schedule whatever the number of schedulers, a changed declaration moves it,
a removed one deletes it (only tasks a declaration created), and a rolling deploy's conflict goes
to the scheduler started last."""

import logging
from datetime import datetime, timedelta

from party.handler import TaskBase
from party.model import NewTask, Outcome, Status
from party.queue import TaskQueue
from party.registry import Registry
from party.scheduler.heartbeat import Heartbeat
from party.scheduler.schedules import Schedules


class Pinger(TaskBase):
    every = 60

    def run(self):
        return None


class Digest(TaskBase):
    schedule = "0 9 * * MON-FRI"
    timezone = "Europe/Berlin"
    schedule_data = {"list": "all"}

    def run(self):
        return None


def make_queue(store, clock, *classes):
    registry = Registry({cls.__name__: cls for cls in classes})
    return TaskQueue(store, registry, lease_seconds=60, clock=clock), registry


def live(queue, party):
    return [t for s in (Status.QUEUED, Status.RUNNING) for t in queue.list(status=s, party=party)]


def test_two_schedulers_create_one_task_per_schedule(store, clock):
    queue, registry = make_queue(store, clock, Pinger, Digest)
    first = Schedules(queue, registry.declarations(), clock=clock)
    second = Schedules(queue, registry.declarations(), clock=clock)
    assert first.tick() == 2
    assert second.tick() == 0
    (ping,) = live(queue, "Pinger")
    (digest,) = live(queue, "Digest")
    assert ping.timestamp == clock.now and ping.schedule == "every 60s" and ping.is_recurring
    # 2030-01-01 is a Tuesday: 09:00 in Berlin (CET) is 08:00 UTC the next morning.
    assert digest.timestamp == datetime(2030, 1, 2, 8) and digest.data == {"list": "all"}
    assert digest.schedule == "cron 0 9 * * MON-FRI Europe/Berlin"
    # Passes later change nothing while the task lives.
    clock.advance(seconds=30)
    assert first.tick() == 0 and second.tick() == 0
    assert len(live(queue, "Pinger")) == 1 and len(live(queue, "Digest")) == 1


def test_a_pass_is_due_at_least_every_minute(store, clock):
    queue, registry = make_queue(store, clock, Pinger)
    schedules = Schedules(queue, registry.declarations(), clock=clock)
    assert schedules.due(clock.now)
    schedules.tick()
    assert not schedules.due(clock.now)
    assert schedules.due(clock.now + timedelta(seconds=60))


def test_a_changed_declaration_moves_the_queued_task(store, clock):
    queue, registry = make_queue(store, clock, Pinger)
    Schedules(queue, registry.declarations(), clock=clock).tick()
    (task,) = live(queue, "Pinger")
    (claimed,) = queue.claim(1)  # it ran once: queued again 60 s after its slot
    queue.record([Outcome(claimed, ok=True, started_on=clock.now, finished_on=clock.now,
                          next_run=clock.now + timedelta(seconds=60))])  # fmt: skip

    class Pinger2(TaskBase):
        every = 2

        def run(self):
            return None

    Pinger2.__name__ = "Pinger"
    queue2, registry2 = make_queue(store, clock, Pinger2)
    clock.advance(seconds=5)
    assert Schedules(queue2, registry2.declarations(), clock=clock).tick() == 1
    (moved,) = live(queue, "Pinger")
    assert moved.id == task.id and moved.schedule == "every 2s"
    # On the new cadence from its last run: 12:00:00 + 2k, the first after 12:00:05.
    assert moved.timestamp == datetime(2030, 1, 1, 12, 0, 6)


def test_a_removed_declaration_deletes_only_tasks_a_declaration_created(store, clock):
    queue, registry = make_queue(store, clock, Pinger)
    Schedules(queue, registry.declarations(), clock=clock).tick()
    (declared,) = live(queue, "Pinger")

    class Plain(TaskBase):
        def run(self):
            return None

    Plain.__name__ = "Pinger"
    queue2, registry2 = make_queue(store, clock, Plain)
    (by_hand,) = queue2.add([NewTask("Pinger", {"n": 1})])
    assert Schedules(queue2, registry2.declarations(), clock=clock).tick() == 1
    assert queue.get(declared.id).status == Status.DELETED
    assert queue.get(by_hand.id).status == Status.QUEUED


def test_a_scheduler_without_the_handler_leaves_its_schedule_alone(store, clock):
    queue, registry = make_queue(store, clock, Pinger)
    Schedules(queue, registry.declarations(), clock=clock).tick()
    other, other_registry = make_queue(store, clock, Digest)
    Schedules(other, other_registry.declarations(), clock=clock).tick()
    assert [t.status for t in live(queue, "Pinger")] == [Status.QUEUED]


def test_changed_schedule_data_replaces_the_task(store, clock):
    queue, registry = make_queue(store, clock, Digest)
    Schedules(queue, registry.declarations(), clock=clock).tick()
    (old,) = live(queue, "Digest")

    class Digest2(Digest):
        schedule_data = {"list": "vip"}

    Digest2.__name__ = "Digest"
    queue2, registry2 = make_queue(store, clock, Digest2)
    assert Schedules(queue2, registry2.declarations(), clock=clock).tick() == 2
    assert queue.get(old.id).status == Status.DELETED
    (new,) = live(queue, "Digest")
    assert new.data == {"list": "vip"}


def test_rolling_deploy_the_scheduler_started_last_wins_and_the_conflict_is_logged(
    store, clock, caplog
):
    class Pinger2(TaskBase):
        every = 2

        def run(self):
            return None

    Pinger2.__name__ = "Pinger"
    old_queue, old_registry = make_queue(store, clock, Pinger)
    new_queue, new_registry = make_queue(store, clock, Pinger2)
    old_beat = Heartbeat(store, workers=1, handlers=["Pinger"], started=clock.now)
    old = Schedules(old_queue, old_registry.declarations(), heartbeat=old_beat, clock=clock)
    old_beat.beat(clock.now)
    old.tick()
    clock.advance(seconds=1)
    new_beat = Heartbeat(store, workers=1, handlers=["Pinger"], started=clock.now)
    new = Schedules(new_queue, new_registry.declarations(), heartbeat=new_beat, clock=clock)
    new_beat.beat(clock.now)
    assert new.tick() == 1
    (task,) = live(new_queue, "Pinger")
    assert task.schedule == "every 2s"
    clock.advance(seconds=1)
    old_beat.beat(clock.now)
    with caplog.at_level(logging.WARNING, logger="party.scheduler.schedules"):
        assert old.tick() == 0
        clock.advance(seconds=1)
        old_beat.beat(clock.now)
        new_beat.beat(clock.now)
        assert old.tick() == 0
    (again,) = live(new_queue, "Pinger")
    assert again.schedule == "every 2s"
    conflicts = [r for r in caplog.records if "schedule conflict for Pinger" in r.getMessage()]
    assert len(conflicts) == 1
