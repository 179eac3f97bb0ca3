"""SQLite specifics: WAL, the indexes behind the due-task claim, and the on-disk shape."""

import sqlite3
from datetime import datetime, timedelta

import pytest

from party.errors import ConfigError
from party.model import Status, Write
from party.stores import describe_store_url, load_backend, open_store
from party.stores.sqlite import SqliteStore


def test_store_uses_wal_and_a_busy_timeout(sqlite_path):
    SqliteStore(sqlite_path).close()
    db = sqlite3.connect(sqlite_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_made_with_the_full_singleton_index_is_migrated_on_open(sqlite_path, registry):
    from party.errors import Conflict
    from party.queue import TaskQueue

    SqliteStore(sqlite_path).close()
    db = sqlite3.connect(sqlite_path)
    db.execute("DROP INDEX tasks_live_singleton")
    db.execute("CREATE UNIQUE INDEX tasks_singleton ON tasks (singleton)")
    db.execute("PRAGMA user_version = 1")  # what such files carried
    db.commit()
    db.close()
    queue = TaskQueue(SqliteStore(sqlite_path), registry)
    names = {row[0] for row in queue.store._db.execute("SELECT name FROM sqlite_master")}
    assert "tasks_live_singleton" in names and "tasks_singleton" not in names
    queue.add([{"party": "Every5", "data": {"a": 1}}])
    with pytest.raises(Conflict):
        queue.add([{"party": "Every5", "data": {"a": 1}}])


def test_open_store_picks_sqlite_for_relative_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel.db")
    assert (tmp_path / "rel.db").exists()
    rel.close()
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert (tmp_path / "abs.db").exists()
    absolute.close()


def test_load_backend_imports_the_store_class_without_opening_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_backend("sqlite:///x.db") is SqliteStore
    assert list(tmp_path.iterdir()) == []
    assert load_backend("mongodb://localhost:27017/party").__name__ == "MongoStore"
    with pytest.raises(ConfigError):
        load_backend("party.db")


def test_store_urls_are_checked_with_clear_errors():
    import pytest

    from party.errors import ConfigError

    assert describe_store_url("mongodb://localhost:27017/party") == "mongodb"
    for bad in ("postgres://x/y", "sqlite:///", "mongodb://localhost:27017", "party.db"):
        with pytest.raises(ConfigError, match="expected sqlite:///relative.db"):
            describe_store_url(bad)


def test_two_connections_see_each_others_writes(sqlite_path, registry):
    from party.queue import TaskQueue

    a = TaskQueue(SqliteStore(sqlite_path), registry)
    b = TaskQueue(SqliteStore(sqlite_path), registry)
    (task,) = a.add([{"party": "Noop"}])
    assert [t.id for t in b.claim(5)] == [task.id]
    assert a.claim(5) == []


def _full_count(store, now_us):
    groups = store._db.execute(
        "SELECT party, status, COUNT(*) FROM tasks GROUP BY party, status"
    ).fetchall()
    due = store._db.execute(
        "SELECT COUNT(*) FROM tasks WHERE status = 'queued' AND timestamp <= ? AND run_at <= ?",
        (now_us, now_us),
    ).fetchone()[0]
    return sorted(groups), due


def test_stats_counts_kept_by_triggers_match_a_full_count(sqlite_path, registry):
    from datetime import timedelta

    from party.model import Status, Write
    from party.queue import TaskQueue
    from party.timestamps import to_micros

    store = SqliteStore(sqlite_path)
    queue = TaskQueue(store, registry)
    now = datetime(2030, 1, 1)
    queue.add([{"party": "Noop", "data": {"i": i}, "timestamp": now} for i in range(6)])
    queue.add([{"party": "Every5", "data": {"i": 1}, "timestamp": now + timedelta(days=1)}])
    a, b, c = store.claim(3, now, now + timedelta(minutes=1), "tok")
    store.write_many([Write(a.id, {"status": Status.COMPLETED}, lease="tok")])
    store.update(Write(b.id, {"status": Status.QUEUED, "run_at": now + timedelta(hours=1)}))
    queue.delete(c.id)
    d, e = store.claim(2, now, now + timedelta(minutes=1), "tok")
    store.write_many([Write(d.id, {"status": Status.COMPLETED}, lease="tok")])
    store.update(Write(d.id, {"party": "Every5"}))  # an ended task changes party
    store.update(Write(e.id, {"party": "Every5", "status": Status.FAILED}))  # and its status
    store._db.execute("DELETE FROM tasks WHERE id = ?", (a.id,))
    from party.model import Task, new_id

    done = Task(new_id(), "Noop", {}, now, now, now, status=Status.COMPLETED, completed_on=now)
    store.insert_many([done])  # a task stored already ended (no add of Party's makes one)
    stats = store.stats(now)
    groups, due = _full_count(store, to_micros(now))
    assert sorted((p, s, n) for p, by in stats["parties"].items() for s, n in by.items()) == groups
    assert stats["due"] == due == 1 and stats["oldest_due"] == now


def test_a_version_6_file_trades_its_run_at_index_for_the_delayed_one(sqlite_path, registry):
    store = SqliteStore(sqlite_path)
    now = datetime(2030, 1, 1)
    from party.stores.sqlite_schema import changed_indexes

    assert changed_indexes(store._db) == []  # a file of this version rebuilds nothing
    store._db.execute("DROP INDEX tasks_delayed")
    store._db.execute("CREATE INDEX tasks_run_at ON tasks (run_at) WHERE status = 'queued'")
    store._db.execute("DROP INDEX tasks_order")
    store._db.execute(
        "CREATE INDEX tasks_order ON tasks (status, timestamp, attempts, created, id)"
    )
    store._db.execute("PRAGMA user_version = 6")
    assert changed_indexes(store._db) == ["tasks_order"]
    store.close()
    store = SqliteStore(sqlite_path)
    names = dict(store._db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    assert "tasks_delayed" in names and "tasks_run_at" not in names
    assert "id, run_at)" in names["tasks_order"] and changed_indexes(store._db) == []
    from party.queue import TaskQueue

    (task,) = TaskQueue(store, registry).add([{"party": "Noop", "timestamp": now}])
    assert store.next_run_at() == task.timestamp == now


def _drop_triggers(store):
    triggers = store._db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    for (trigger,) in triggers.fetchall():
        store._db.execute(f"DROP TRIGGER {trigger}")


def test_a_file_made_before_the_counts_gets_them_filled_on_open(sqlite_path, registry):
    from party.queue import TaskQueue

    store = SqliteStore(sqlite_path)
    TaskQueue(store, registry).add([{"party": "Noop"}] * 3)
    _drop_triggers(store)
    store._db.execute("DROP TABLE totals")
    store._db.execute("DROP TABLE ended")
    store._db.execute("PRAGMA user_version = 2")
    store.close()
    assert SqliteStore(sqlite_path).stats(datetime(2030, 1, 1))["statuses"]["queued"] == 3


_VERSION_7_COUNTS = """
CREATE TABLE counts (party TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (party, status)) WITHOUT ROWID;
CREATE TRIGGER counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO counts (party, status, n) VALUES (NEW.party, NEW.status, 1)
        ON CONFLICT (party, status) DO UPDATE SET n = n + 1;
END;
"""


def test_a_version_7_file_trades_its_counts_of_every_status_for_totals_and_ended(
    sqlite_path, registry
):
    from party.queue import TaskQueue

    store = SqliteStore(sqlite_path)
    queue = TaskQueue(store, registry)
    now = datetime(2030, 1, 1)
    queue.add([{"party": "Noop", "data": {"i": i}, "timestamp": now} for i in range(4)])
    (done,) = store.claim(1, now, now + timedelta(minutes=1), "tok")
    store.write_many([Write(done.id, {"status": Status.COMPLETED}, lease="tok")])
    store.claim(1, now, now + timedelta(minutes=1), "tok")
    _drop_triggers(store)
    store._db.execute("DROP TABLE totals")
    store._db.execute("DROP TABLE ended")
    store._db.executescript(_VERSION_7_COUNTS)
    store._db.execute("PRAGMA user_version = 7")
    store.close()
    store = SqliteStore(sqlite_path)
    tables = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master")}
    assert "counts" not in tables and "counts_insert" not in tables
    assert {"totals", "ended", "tally_insert", "tally_update", "tally_delete"} <= tables
    assert store.stats(now)["parties"] == {"Noop": {"queued": 2, "running": 1, "completed": 1}}


def test_a_version_5_file_gets_the_retention_index_that_names_the_live_statuses(
    sqlite_path, registry
):
    from datetime import timedelta

    from party.queue import TaskQueue

    store = SqliteStore(sqlite_path)
    queue = TaskQueue(store, registry)
    old, kept = queue.add([{"party": "Noop"}, {"party": "Noop"}])
    queue.delete(old.id)
    store._db.execute("DROP INDEX tasks_ended")
    store._db.execute(
        "CREATE INDEX tasks_ended ON tasks (status, coalesce(completed_on, created)) "
        "WHERE status IN ('completed', 'failed', 'deleted')"
    )
    store._db.execute("PRAGMA user_version = 5")
    store.close()
    store = SqliteStore(sqlite_path)
    index = "SELECT sql FROM sqlite_master WHERE name = 'tasks_ended'"
    (sql,) = store._db.execute(index).fetchone()
    assert "NOT IN ('queued', 'running')" in sql
    assert store.prune([Status.DELETED], datetime.now() + timedelta(days=1), 10) == 1
    assert store.get(old.id) is None and store.get(kept.id) is not None


@pytest.mark.parametrize(("due", "ahead", "delayed"), [(9, 1, 0), (1, 9, 2), (9, 9, 2), (0, 0, 0)])
def test_due_is_counted_from_the_smaller_side_of_now(sqlite_path, monkeypatch, due, ahead, delayed):
    from datetime import timedelta

    from party.model import Task, new_id
    from party.stores import sqlite
    from party.timestamps import to_micros

    monkeypatch.setattr(sqlite, "STATS_COUNT_CAP", 4)
    store = SqliteStore(sqlite_path)
    now = datetime(2030, 1, 1)

    def task(at, run_at=None):
        return Task(id=new_id(), party="Noop", data={}, timestamp=at, created=now,
                    run_at=run_at or at)  # fmt: skip

    past, future = now - timedelta(seconds=5), now + timedelta(seconds=5)
    store.insert_many(
        [task(past) for _ in range(due)]
        + [task(future) for _ in range(ahead)]
        + [task(past, future) for _ in range(delayed)]
        + [task(future, past)]  # a force-run that failed: its retry is due before its time
    )
    assert store.stats(now)["due"] == _full_count(store, to_micros(now))[1] == due


def test_a_file_made_before_a_field_was_declared_gains_its_column_on_open(sqlite_path):
    from party.model import Task, new_id

    store = SqliteStore(sqlite_path)
    at = datetime(2030, 1, 1)
    task = Task(new_id(), "Noop", {"a": 1}, at, at, at, last_error={"type": "E"})
    store.insert_many([task])
    store.close()
    db = sqlite3.connect(sqlite_path)
    db.execute("ALTER TABLE tasks DROP COLUMN last_error")  # as if declared after the file was made
    db.commit()
    db.close()
    store = SqliteStore(sqlite_path)
    columns = [row[1] for row in store._db.execute("PRAGMA table_info(tasks)")]
    assert "last_error" in columns
    assert store.get(task.id).last_error is None  # the default of the stored tasks
    assert store.update(Write(task.id, {"last_error": {"type": "F"}})).last_error == {"type": "F"}
    store.close()


def test_the_tasks_table_has_one_column_per_task_field(sqlite_path):
    from party.model import TASK_FIELDS

    store = SqliteStore(sqlite_path)
    rows = store._db.execute("PRAGMA table_info(tasks)").fetchall()
    assert [row[1] for row in rows] == [spec.name for spec in TASK_FIELDS]
    not_null = {row[1] for row in rows if row[3]}
    assert not_null == {spec.name for spec in TASK_FIELDS if not spec.nullable} - {"id"}
    store.close()
