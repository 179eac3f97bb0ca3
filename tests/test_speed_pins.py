"""Tests that pin implementation details chosen for speed: query plans, commit and checkpoint
behaviour, id bytes, pickle shapes, fast encoders equal to their plain versions.

Each proves a choice that makes Party fast, not a rule of the contract: a refactor that breaks
one should know which optimisation it is undoing (and measure before dropping it).
"""

import itertools
import json
import time
from datetime import datetime

import pytest
from bson import ObjectId

from party.model import Status, Task, new_id
from party.server import wire
from party.stores.sqlite import SqliteStore
from tests.test_wire import WHY, make_task

# -- SQLite: the indexes behind the hot queries -------------------------------------------------


def test_due_task_claim_is_served_by_the_order_index_without_a_sort(sqlite_path):
    store = SqliteStore(sqlite_path)
    plan = " ".join(store.explain_claim(datetime(2030, 1, 1)))
    # Covering: run_at ends the index, so the retries waiting at its head are skipped unread.
    assert "USING COVERING INDEX tasks_order" in plan
    assert "TEMP B-TREE" not in plan  # no sort step: the index gives queue order


def test_next_run_at_reads_the_first_entries_of_two_indexes(sqlite_path):
    from party.stores.sqlite import NEXT_DELAYED, NEXT_UNDELAYED

    store = SqliteStore(sqlite_path)
    for sql, index in ((NEXT_DELAYED, "tasks_delayed"), (NEXT_UNDELAYED, "tasks_order")):
        plan = " ".join(row[-1] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql))
        assert f"INDEX {index}" in plan and "TEMP B-TREE" not in plan


def test_only_retries_waiting_for_their_delay_have_an_entry_in_the_delayed_index(sqlite_path):
    # A fresh task's run_at is its timestamp: an add writes no page of tasks_delayed.
    from datetime import timedelta

    from party.model import Write

    store = SqliteStore(sqlite_path)
    now = datetime(2030, 1, 1)
    store.insert_many([make_task(id=new_id(), timestamp=now, run_at=now) for _ in range(3)])
    entries = "SELECT COUNT(*) FROM tasks INDEXED BY tasks_delayed WHERE " + (
        "status = 'queued' AND run_at > timestamp"
    )
    assert store._db.execute(entries).fetchone()[0] == 0
    (task, *_) = store.claim(3, now, now + timedelta(minutes=1), "tok")
    retry = {"status": Status.QUEUED, "run_at": now + timedelta(seconds=30)}
    assert store.write_many([Write(task.id, retry, lease="tok")]) == [True]
    assert store._db.execute(entries).fetchone()[0] == 1


def test_batched_writes_find_each_task_by_its_id(sqlite_path):
    from party.model import Status
    from party.stores.sqlite import _batch_update_statement

    store = SqliteStore(sqlite_path)
    sql = _batch_update_statement(("status",), ("lease",), True, (Status.RUNNING,), 4)
    params = ["id", "tok", "completed"] * 4
    plan = [row[-1] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    # The rows of VALUES drive the join, one primary-key lookup each; never a scan of tasks.
    assert "SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)" in plan
    assert not any(step.startswith("SCAN tasks") for step in plan)


def test_singleton_index_holds_only_live_keys_and_serves_the_clash_lookup(sqlite_path):
    store = SqliteStore(sqlite_path)
    (sql,) = store._db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'tasks_live_singleton'"
    ).fetchone()
    assert "WHERE singleton IS NOT NULL" in sql
    plan = store._db.execute("EXPLAIN QUERY PLAN SELECT 1 FROM tasks WHERE singleton = ?", ("k",))
    assert "INDEX tasks_live_singleton" in " ".join(row[-1] for row in plan)


def test_partial_indexes_cost_a_status_update_no_temporary_btree(sqlite_path):
    # Every UPDATE of a status evaluates each partial index's WHERE for the old row and the new
    # one, inside the row loop; SQLite builds an IN list of three or more values as a temporary
    # b-tree each time (OpenEphemeral), which cost the drain a sixth of its instructions when
    # tasks_ended was written `status IN ('completed', 'failed', 'deleted')`.
    import sqlite3

    from party.stores.sqlite import _batch_update_statement

    SqliteStore(sqlite_path).close()
    completion = _batch_update_statement(
        ("completed_on", "status"), ("lease",), True, (Status.RUNNING,), 4
    )
    claim = (
        "UPDATE tasks SET status = 'running', attempts = attempts + 1 WHERE rowid IN "
        "(SELECT rowid FROM tasks WHERE status = 'queued' LIMIT 4) RETURNING id"
    )

    def temporary_btrees():
        db = sqlite3.connect(sqlite_path)  # a new connection: no statement prepared before
        try:
            return [
                sum(
                    op[1] == "OpenEphemeral"
                    for op in db.execute("EXPLAIN " + sql, [None] * sql.count("?"))
                )
                for sql in (completion, claim)
            ]
        finally:
            db.close()

    with_indexes = temporary_btrees()
    db = sqlite3.connect(sqlite_path)
    partial = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' "
        "AND sql LIKE '%WHERE%'"
    ).fetchall()
    assert {"tasks_ended", "tasks_delayed"} <= {name for (name,) in partial}
    for (name,) in partial:
        db.execute(f"DROP INDEX {name}")
    db.close()
    assert with_indexes == temporary_btrees()


def test_a_claim_writes_no_count_and_an_end_writes_one(sqlite_path):
    # The counts behind stats (the totals and ended tables) are kept by triggers; a task that
    # moves between the live statuses (claim, retry, hand-back) writes none: the drain's claim
    # then changes only its own rows, and its completion one count row besides.
    from datetime import timedelta

    from party.model import Write

    store = SqliteStore(sqlite_path)
    now = datetime(2030, 1, 1)
    store.insert_many(_fresh_tasks(4, 0))
    db = store._db
    before = db.total_changes  # counts the rows that trigger programs change too
    claimed = store.claim(4, now, now + timedelta(minutes=1), "tok")
    assert len(claimed) == 4 and db.total_changes - before == 4
    before = db.total_changes
    store.write_many([Write(claimed[0].id, {"status": Status.QUEUED}, lease="tok")])
    assert db.total_changes - before == 1
    before = db.total_changes
    store.write_many([Write(t.id, {"status": Status.COMPLETED}, lease="tok") for t in claimed[1:]])
    assert db.total_changes - before == 3 + 3
    store.close()


# -- SQLite: commits never checkpoint inside the writers' lock -------------------------------------


def _fresh_tasks(n, start):
    from party.model import Task, new_id

    now = datetime(2030, 1, 1)
    return [
        Task(id=new_id(), party="Noop", data={"n": start + i}, timestamp=now, created=now,
             run_at=now)
        for i in range(n)
    ]  # fmt: skip


def test_commits_leave_the_checkpoint_to_maintain(sqlite_path):
    store = SqliteStore(sqlite_path)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size = sqlite_path.stat().st_size
    # Enough transactions to cross SQLite's default automatic checkpoint (1,000 pages of log)
    # several times over: none of them copies the log into the database file.
    for batch in range(400):
        store.insert_many(_fresh_tasks(10, batch * 10))
    assert sqlite_path.stat().st_size == size
    store._checkpointed = 0.0  # as if the last one were long ago
    store.maintain()
    assert sqlite_path.stat().st_size > size
    store.close()


def test_a_connection_checkpoints_itself_when_nothing_maintains_the_store(sqlite_path, monkeypatch):
    import party.stores.sqlite_file as sqlite_file

    monkeypatch.setattr(sqlite_file, "CHECKPOINT_EVERY_WRITES", 50)
    store = SqliteStore(sqlite_path)
    size = sqlite_path.stat().st_size
    for batch in range(60):
        store.insert_many(_fresh_tasks(10, batch * 10))
    assert sqlite_path.stat().st_size > size
    assert store._writes == 10
    store.close()


# -- the wake-up of an add ------------------------------------------------------------------------


def test_an_add_with_no_scheduler_listening_costs_one_stat_and_no_ownership_check(
    tmp_path, monkeypatch
):
    # Applications often add before any scheduler ran: each add used to check the missing
    # folder's parent and the folder itself (two lstat calls, 31k of 220k instructions an add).
    import os

    from party.stores.wakeup import Notifier

    calls = []

    def counted(name):
        real = getattr(os, name)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", counted("stat"))
    monkeypatch.setattr(os, "lstat", counted("lstat"))
    notifier = Notifier(tmp_path / "party-0" / "wake-none")
    try:
        assert notifier.notify() == 0 and notifier.notify() == 0
    finally:
        notifier.close()
    assert calls == ["stat", "stat"]


# -- ids and the pickle of a task -----------------------------------------------------------------


def test_statement_journals_are_kept_in_memory(sqlite_path):
    # A multi-row statement inside a transaction (the capped claim, prune) keeps a statement
    # journal: as a temp file's buffer it made a capped claim of 4 among 20,000 tasks 2.3x slower.
    assert SqliteStore(sqlite_path)._db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY


def test_ids_are_object_ids_of_now_counting_up_within_a_process():
    before = int(time.time())
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(str(ObjectId(i)) == i for i in ids)  # the Mongo store converts them
    assert before <= int(ids[0][:8], 16) <= int(time.time())
    assert len({i[8:18] for i in ids}) == 1  # one process part
    counters = [int(i[18:], 16) for i in ids]
    assert all((b - a) % 2**24 == 1 for a, b in itertools.pairwise(counters))


def test_a_pickled_task_is_a_flat_tuple_of_micros_and_strings():
    at = datetime(2030, 1, 2, 3, 4, 5, 678901)
    task = Task(new_id(), "Noop", {}, at, at, at, status=Status.RUNNING, lease_expires=at)
    function, values = task.__reduce__()
    assert function.__name__ == "task_from_micros" and function.__module__ == "party.model"
    assert all(type(v) in (str, int, bool, dict, type(None)) for v in values)
    assert function(*values) == task


# -- the fast encoders of the wire ----------------------------------------------------------------


def test_a_batch_encodes_like_single_tasks():
    done = make_task(status=Status.COMPLETED, started_on=datetime(2030, 1, 1), result=1,
                     completed_on=datetime(2030, 1, 1, 0, 0, 1))  # fmt: skip
    tasks = [make_task(id=f"{i:024x}", data={"i": i}) for i in range(10)] + [done]
    assert wire.encode_tasks(tasks, WHY) == [wire.encode_task(t, WHY) for t in tasks]


@pytest.mark.parametrize("size", [3, 12])
def test_dumps_tasks_writes_the_bytes_of_the_encoded_tasks(size):
    later = datetime(2030, 1, 2)
    done = make_task(status=Status.COMPLETED, started_on=later, completed_on=later, result=[1.5])
    failed = make_task(status=Status.FAILED, last_error={"type": "E", "message": "ü"})
    varied = [
        make_task(id=f"{i:024x}", data={"i": i, "s": 'é"\\\n', "n": [None, True, {}]})
        for i in range(size)
    ]
    varied[1:3] = [make_task(party="Other", is_recurring=True), make_task(timestamp=later)]
    tasks = [*varied, make_task(last_run_on=later, attempts=2), done, failed, make_task(data={})]
    body = wire.dumps_tasks(tasks, WHY)
    assert body == wire.dumps([wire.encode_task(t, WHY) for t in tasks])
    assert json.loads(body)[0]["data"]["s"] == 'é"\\\n'


@pytest.mark.parametrize(
    "text",
    ['{"i":1}', "{}", '[1,"a",null]', '"s"', "3.5", " {}", "{} ", '{"a":1}x', "{", "", "NaN",
     '{"a":{"b":[true,false]}}', '{"k":"\\u00e9\\n"}'],
)  # fmt: skip
def test_the_column_decoder_answers_as_json_loads(text):
    from party.stores.sqlite_statements import _loads

    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            _loads(text)
    else:
        assert repr(_loads(text)) == repr(expected)
