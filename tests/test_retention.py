"""Retention: ended tasks go after their keep time, a batch at a time, counted in ``pruned``;
queued and running tasks (recurring ones too) never go; the settings and the scheduler's pass."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from party import config
from party.errors import ConfigError
from party.model import Status, Write
from party.scheduler.retention import Retention

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def _end(queue, task, status, when):
    fields = {"status": status, "completed_on": when, "singleton": None}
    if status == Status.DELETED:
        fields["completed_on"] = None  # deleted before it ran: only its created time
    return queue.store.update(Write(task.id, fields))


def _statuses(queue):
    return {k: v for k, v in queue.stats()["statuses"].items() if v}


def test_ended_tasks_go_after_their_keep_time_and_live_ones_never(queue, clock):
    old = queue.add([{"party": "Noop"}] * 6)
    queue.add([{"party": "RecurringTask", "data": {"k": 1}}])  # a live recurring task: never pruned
    _end(queue, old[0], Status.COMPLETED, clock.now)
    _end(queue, old[1], Status.DELETED, clock.now)
    _end(queue, old[2], Status.FAILED, clock.now)
    (claimed, *_) = queue.claim(1)  # old[3] is running
    clock.advance(days=8)
    young = queue.add([{"party": "Noop"}] * 2)
    _end(queue, young[0], Status.COMPLETED, clock.now)
    _end(queue, young[1], Status.FAILED, clock.now)
    clock.advance(days=1)
    assert queue.prune(7 * DAY, 30 * DAY) == 2  # the old completed and the old deleted
    assert queue.prune(7 * DAY, 30 * DAY) == 0
    assert queue.stats()["pruned"] == 2
    clock.advance(days=30)  # the old failed one is 39 days old, the young one 30 and a bit
    assert queue.prune(0, 30 * DAY) == 2
    assert queue.stats()["pruned"] == 4
    assert _statuses(queue) == {"queued": 3, "running": 1, "completed": 1}
    assert queue.prune(0, 0) == 0  # 0 keeps for ever


def test_completed_on_decides_before_created(queue, clock):
    (task,) = queue.add([{"party": "Noop"}])
    clock.advance(days=10)
    _end(queue, task, Status.COMPLETED, clock.now)  # created 10 days ago, ended now
    assert queue.prune(7 * DAY, 0) == 0
    clock.advance(days=7, seconds=1)
    assert queue.prune(7 * DAY, 0) == 1


def test_prune_takes_a_batch_at_a_time(queue, clock):
    tasks = queue.add([{"party": "Noop"}] * 25)
    for task in tasks:
        _end(queue, task, Status.COMPLETED, clock.now)
    clock.advance(days=8)
    assert [queue.prune(7 * DAY, 0, limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert queue.stats()["pruned"] == 25


def test_the_pruned_counter_outlives_the_store_handle(sqlite_path, registry, clock):
    from party.queue import TaskQueue
    from party.stores.sqlite import SqliteStore

    queue = TaskQueue(SqliteStore(sqlite_path), registry, clock=clock)
    for task in queue.add([{"party": "Noop"}] * 3):
        _end(queue, task, Status.COMPLETED, clock.now)
    clock.advance(days=8)
    assert queue.prune(7 * DAY, 0) == 3
    queue.store.close()
    reopened = SqliteStore(sqlite_path)
    assert reopened.stats(clock.now)["pruned"] == 3
    reopened.close()


def test_the_sqlite_prune_walks_its_index(sqlite_path):
    from party.stores.sqlite import _PRUNE, SqliteStore

    store = SqliteStore(sqlite_path)
    sql = "EXPLAIN QUERY PLAN " + _PRUNE.format(statuses="'completed', 'deleted'")
    plan = " ".join(row[-1] for row in store._db.execute(sql, (0, 10)).fetchall())
    store.close()
    assert "USING INDEX tasks_ended" in plan or "USING COVERING INDEX tasks_ended" in plan


def test_the_pass_prunes_in_batches_and_comes_back_at_once_while_a_backlog_remains(queue, clock):
    for task in queue.add([{"party": "Noop"}] * 30):
        _end(queue, task, Status.COMPLETED, clock.now)
    clock.advance(days=8)
    retention = Retention(queue, keep_completed=7 * DAY, keep_failed=0, batch=10, budget=0)
    assert retention.tick(clock.now) == 10
    assert retention.next_at == clock.now  # more to do: the next pass of the loop
    assert retention.tick(clock.now) == 10
    retention.budget = 10.0
    assert retention.tick(clock.now) == 10  # the rest, then a short batch ends the pass
    assert retention.next_at == clock.now + timedelta(seconds=10)
    assert retention.tick(clock.now + timedelta(seconds=5)) == 0  # not due yet
    assert queue.stats()["pruned"] == 30


def test_keeping_everything_turns_the_pass_off(queue):
    retention = Retention(queue, keep_completed=0, keep_failed=0)
    assert not retention.enabled and retention.tick(queue.clock()) == 0


def test_a_short_keep_time_is_looked_at_more_often():
    assert Retention(None, keep_completed=1, keep_failed=0).every == timedelta(seconds=0.5)
    assert Retention(None, keep_completed=DAY, keep_failed=0).every == timedelta(seconds=10)


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * DAY), ("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("45s", 45),
     ("3600", 3600), ("0", 0), ("0s", 0), ("1.5h", 5400), ("2w", 14 * DAY)],
)  # fmt: skip
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


def test_defaults_and_environment():
    assert config.load({}, {}).keep_completed == 7 * DAY
    assert config.load({}, {}).keep_failed == 30 * DAY
    settings = config.load({"keep_failed": "2d"}, {"PARTY_KEEP_COMPLETED": "0s"})
    assert (settings.keep_completed, settings.keep_failed) == (0, 2 * DAY)
    assert config.load({}, config.to_environ(settings)) == settings  # how `party up` passes them


@pytest.mark.parametrize("bad", ["soon", "-1d", "7 days", "1e400"])
def test_a_bad_duration_names_the_setting(bad):
    with pytest.raises(ConfigError, match="PARTY_KEEP_COMPLETED"):
        config.load({}, {"PARTY_KEEP_COMPLETED": bad})


@pytest.mark.processes
def test_the_scheduler_stops_at_start_on_a_bad_duration(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{tmp_path / 'p.db'}",
         "--keep-failed", "a month"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--keep-failed='a month' is not valid" in out.stderr


def test_up_and_the_scheduler_take_the_flags():
    from party.cli import UP_SETTINGS
    from party.scheduler.main import SETTINGS

    for name in ("keep_completed", "keep_failed"):
        assert name in UP_SETTINGS and name in SETTINGS


@pytest.mark.processes
def test_a_scheduler_prunes_what_it_completed_once_the_keep_time_passed(tmp_path, registry):
    import os

    from party.queue import TaskQueue
    from party.stores.sqlite import SqliteStore
    from tests.conftest import wait_for

    queue = TaskQueue(SqliteStore(tmp_path / "party.db"), registry)
    queue.add([{"party": "Noop"}] * 50)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    env["PARTY_KEEP_COMPLETED"] = "1s"  # as `party up` hands it over
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{tmp_path / 'party.db'}",
         "--tasks", str(ROOT / "tests" / "handlers"), "--workers", "1", "--log-level", "WARNING"],
        cwd=tmp_path, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: queue.stats()["pruned"] == 50, 30, "the 50 tasks to be pruned")
        assert sum(queue.stats()["statuses"].values()) == 0
    finally:
        proc.terminate()
        proc.wait(30)
        queue.store.close()


def test_get_stats_reports_the_pruned_count(tmp_path):
    from party.client import BlockingHTTPClient
    from tests.conftest import wait_for
    from tests.serving import ServerThread

    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock").start()
    try:
        queue = server.queue
        for task in queue.add([{"party": "Noop"}] * 4):
            _end(queue, task, Status.COMPLETED, queue.clock() - timedelta(days=8))
        assert queue.prune(7 * DAY, 0) == 4
        with BlockingHTTPClient(server.sock) as con:
            wait_for(lambda: con.stats()["pruned"] == 4, 10, "/stats to say 4 pruned")
    finally:
        server.stop()
