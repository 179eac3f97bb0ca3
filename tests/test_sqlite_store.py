"""SQLite specifics: WAL, the indexes behind the due-task claim, and the on-disk shape."""

import sqlite3
from datetime import datetime

from party.stores import describe_store_url, open_store
from party.stores.sqlite import SqliteStore


def test_store_uses_wal_and_a_busy_timeout(sqlite_path):
    SqliteStore(sqlite_path).close()
    db = sqlite3.connect(sqlite_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_due_task_claim_is_served_by_the_order_index_without_a_sort(sqlite_path):
    store = SqliteStore(sqlite_path)
    plan = " ".join(store.explain_claim(datetime(2030, 1, 1)))
    assert "USING INDEX tasks_order" in plan
    assert "TEMP B-TREE" not in plan  # no sort step: the index gives queue order


def test_next_run_at_reads_one_entry_of_the_run_at_index(sqlite_path):
    from party.stores.sqlite import NEXT_RUN_AT

    store = SqliteStore(sqlite_path)
    plan = " ".join(row[-1] for row in store._db.execute("EXPLAIN QUERY PLAN " + NEXT_RUN_AT))
    assert "USING INDEX tasks_run_at" in plan and "TEMP B-TREE" not in plan


def test_open_store_picks_sqlite_for_relative_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel.db")
    assert (tmp_path / "rel.db").exists()
    rel.close()
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert (tmp_path / "abs.db").exists()
    absolute.close()


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
