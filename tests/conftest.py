"""Shared fixtures: a real SQLite file, mongomock, an opt-in real MongoDB, and the test handlers."""

import os
import uuid
from pathlib import Path

import pytest

from party.queue import TaskQueue
from party.registry import discover
from party.stores.sqlite import SqliteStore

HANDLERS = Path(__file__).parent / "handlers"
MONGODB_URI = os.environ.get("PARTY_TEST_MONGODB_URI")


@pytest.fixture
def sqlite_path(tmp_path):
    return tmp_path / "party.db"


def _mongomock_store():
    import mongomock

    from party.stores.mongo import MongoStore

    client = mongomock.MongoClient()
    return MongoStore(client.get_database("party_test").get_collection("tasks"))


def _real_mongo_store():
    from party.stores.mongo import MongoStore

    if not MONGODB_URI:
        pytest.skip("set PARTY_TEST_MONGODB_URI=mongodb://host:port/db to test a real MongoDB")
    store = MongoStore.from_url(MONGODB_URI, collection=f"tasks_{uuid.uuid4().hex[:8]}")
    return store


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def store(request, sqlite_path):
    """The same contract, once per backend."""
    if request.param == "sqlite":
        s = SqliteStore(sqlite_path)
    elif request.param == "mongomock":
        s = _mongomock_store()
    else:
        s = _real_mongo_store()
    yield s
    if request.param == "mongodb":
        s._tasks.drop()
    s.close()


@pytest.fixture(scope="session")
def registry():
    return discover([str(HANDLERS)])


class Clock:
    """A settable clock for the queue: tests step time instead of sleeping."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **delta):
        from datetime import timedelta

        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock():
    from datetime import datetime

    return Clock(datetime(2030, 1, 1, 12, 0, 0))


@pytest.fixture
def queue(store, registry, clock):
    return TaskQueue(store, registry, lease_seconds=60, clock=clock)


def wait_for(predicate, timeout=5.0, what="condition", interval=0.01):
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    Every wait in the suite goes through here (or has its own deadline): a wait without one hangs
    the whole run when what it waits for never happens.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)


def pytest_configure(config):
    from tests.serving import contract, watch_answers

    contract()  # built now, not inside the first test that receives an answer
    watch_answers()


@pytest.fixture(autouse=True)
def answers_follow_the_contract(request):
    """Every HTTP answer a test receives conforms to the OpenAPI document (tests/serving.py)."""
    yield
    from tests.serving import take_violations

    problems = take_violations()
    if request.node.get_closest_marker("off_contract") is None:
        assert not problems, "answers that break docs/openapi.json:\n" + "\n".join(problems)


@pytest.fixture(autouse=True)
def only_process_tests_start_processes(request, monkeypatch):
    """A test that forks or starts a process must be marked ``processes``, so that
    ``make test-fast`` (``-m "not processes"``) stays seconds long; an unmarked one fails here."""
    if request.node.get_closest_marker("processes") is not None:
        yield
        return
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process: mark it @pytest.mark.processes"
        )

    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    yield
