"""MongoDB specifics: indexes, millisecond precision, ObjectId ids (mongomock here; a real server
runs the contract suites when PARTY_TEST_MONGODB_URI is set)."""

from datetime import datetime

import mongomock
from bson import ObjectId

from party.model import Task, new_id
from party.stores.mongo import MongoStore


def make_store():
    return MongoStore(mongomock.MongoClient().get_database("t").get_collection("tasks"))


def test_indexes_cover_due_query_singleton_and_leases():
    store = make_store()
    info = store._tasks.index_information()
    assert info["tasks_order"]["key"] == [
        ("status", 1), ("timestamp", 1), ("attempts", 1), ("created", 1), ("_id", 1)
    ]  # fmt: skip
    assert info["tasks_singleton"]["unique"] is True
    assert "tasks_lease" in info and "tasks_run_at" in info
    store.ensure_indexes()  # idempotent


def test_ids_are_object_ids_and_times_round_up_to_milliseconds():
    store = make_store()
    at = datetime(2030, 1, 1, 0, 0, 0, 1)
    task = Task(id=new_id(), party="Noop", data={}, timestamp=at, created=at, run_at=at)
    (stored,) = store.insert_many([task])
    doc = store._tasks.find_one()
    assert isinstance(doc["_id"], ObjectId) and str(doc["_id"]) == task.id
    assert stored.timestamp == datetime(2030, 1, 1, 0, 0, 0, 1000)  # up, never down
    assert stored.created == datetime(2030, 1, 1)
    assert "singleton" not in doc and "lease" not in doc  # absent, so the unique index skips it


def test_options_in_the_url_win_over_partys_defaults():
    from party.stores.mongo import client_options_for

    assert client_options_for("mongodb://h/db")["serverSelectionTimeoutMS"] == 5000
    chosen = client_options_for("mongodb://h/db?w=1&serverselectiontimeoutms=500")
    assert "serverSelectionTimeoutMS" not in chosen  # the URL's 500 stands
    given = client_options_for("mongodb://h/db?connectTimeoutMS=9", connectTimeoutMS=1, appname="x")
    assert given == {
        "serverSelectionTimeoutMS": 5000, "timeoutMS": 10000, "appname": "x", "tz_aware": False
    }  # fmt: skip


def test_a_server_selection_timeout_in_the_url_is_the_one_used_and_no_password_is_shown():
    import time

    import pytest

    from party.errors import StoreUnavailable

    url = "mongodb://admin:Sup3rS3cret@127.0.0.1:9/db?serverSelectionTimeoutMS=300"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        MongoStore.from_url(url)
    assert time.monotonic() - started < 3  # not Party's 5 s
    assert "127.0.0.1:9" in str(info.value)  # bounded by the URL's 300 ms (timeoutMS follows it)
    shown = "".join(str(e) for e in (info.value, info.value.__cause__, info.value.__context__))
    assert "Sup3rS3cret" not in shown and "Sup3rS3cret" not in repr(info.value)


def test_tasks_are_written_with_majority_unless_the_url_names_a_write_concern():
    from party.stores.mongo import write_concern_for

    assert write_concern_for({}).document == {"w": "majority"}
    assert write_concern_for({"w": 1, "wtimeout": 200}).document == {"w": 1, "wtimeout": 200}


def test_a_malformed_url_is_a_config_error_without_its_password():
    import pytest

    from party.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        MongoStore.from_url("mongodb://admin:Sup3rS3cret@h:99999/db")
    assert "Sup3rS3cret" not in str(info.value) and info.value.__cause__ is None
