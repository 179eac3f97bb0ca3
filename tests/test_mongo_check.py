"""``party check``: what it prints and its exit status, on SQLite and on mongomock (a real server
runs the Mongo case too when PARTY_TEST_MONGODB_URI names one)."""

import io
import os
import uuid

import pytest

from party.check import report, run
from party.cli import main
from party.stores.base import Finding
from party.stores.sqlite import SqliteStore

MONGODB_URI = os.environ.get("PARTY_TEST_MONGODB_URI")


def check(url):
    out = io.StringIO()
    from argparse import Namespace

    status = run(Namespace(store=url), out)
    return status, out.getvalue()


def test_check_on_sqlite_prints_the_file_journal_synchronous_and_schema(tmp_path):
    path = tmp_path / "party.db"
    SqliteStore(path).close()
    status, text = check(f"sqlite:///{path}")
    assert status == 0, text
    for expected in (str(path), "journal mode", "wal", "synchronous", "full", "schema version"):
        assert expected in text
    assert "ready" in text


def test_check_runs_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "party.db"
    assert main(["check", "--store", f"sqlite:///{path}?synchronous=normal"]) == 0
    out = capsys.readouterr().out
    assert "normal" in out and "warning" in out  # durability traded away, said so


def mongo_url():
    if MONGODB_URI:
        base, _, query = MONGODB_URI.partition("?")
        return base, query
    return f"mongomock://check-{uuid.uuid4().hex[:8]}/party", ""


def test_check_on_mongo_reports_missing_indexes_as_a_problem_then_ready_once_made():
    from party.stores.mongo import MongoStore

    if MONGODB_URI:
        pytest.skip("a shared real database may hold indexes already; the mongomock case shows it")
    url, _ = mongo_url()
    status, text = check(url)
    assert status == 1 and "indexes missing" in text and "PROBLEM" in text, text
    assert "topology" in text and "write concern" in text and "claim round trip" in text
    MongoStore.from_url(url).close()  # a server or scheduler creates them on start
    status, text = check(url)
    assert status == 0, text
    assert "tasks_order" in text and "ready" in text


def test_check_names_a_conflicting_index_and_a_weak_write_concern():
    from party.stores.mongo import connect

    url, _ = mongo_url()
    _, tasks = connect(url)
    tasks.create_index([("singleton", 1)], name="tasks_singleton")  # not unique: a conflict
    status, text = check(url)
    assert status == 1 and "index conflict" in text and "dropIndex('tasks_singleton')" in text


def test_a_finding_with_a_problem_makes_the_exit_status_1():
    out = io.StringIO()
    assert report([Finding("a", "b", warning="w")], out) == 0
    assert report([Finding("a", "b", problem="fix it")], out) == 1
    assert "PROBLEM: fix it" in out.getvalue()
