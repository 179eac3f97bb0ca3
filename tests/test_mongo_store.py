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
