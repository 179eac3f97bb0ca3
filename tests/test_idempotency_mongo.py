"""The MongoDB side of idempotent adds and caps (mongomock): a key reserved before its tasks
reads "in progress" (409), an abandoned reservation is settled by the next add with its key,
and the slots of ``max_running`` hold against a claimer that raced into the same slot."""

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from party.errors import KeyInProgress
from party.model import Status
from party.queue import TaskQueue
from party.registry import discover

mongomock = pytest.importorskip("mongomock")

ITEMS = [{"party": "Noop", "data": {"n": 1}}, {"party": "Noop", "data": {"n": 2}}]
DIGEST = hashlib.sha256(b"body").hexdigest()


def _encode(tasks):
    return json.dumps([t.id for t in tasks]).encode()


@pytest.fixture
def mongo_queue(registry, clock):
    from party.stores.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient().get_database("p").get_collection("tasks"))
    yield TaskQueue(store, registry, clock=clock)
    store.close()


def _count(queue):
    return sum(queue.stats()["statuses"].values())


def test_a_reservation_without_its_answer_is_in_progress(mongo_queue, clock):
    keys = mongo_queue.store._keys
    keys.insert_one({"_id": "k", "digest": DIGEST, "created": clock.now, "ids": [], "answer": None})
    with pytest.raises(KeyInProgress):
        mongo_queue.recall("k", DIGEST)
    with pytest.raises(KeyInProgress):
        mongo_queue.add_once("k", DIGEST, ITEMS, _encode)
    assert _count(mongo_queue) == 0


def test_an_abandoned_reservation_whose_tasks_went_in_answers_with_them(mongo_queue, clock):
    first = mongo_queue.add_once("k", DIGEST, ITEMS, _encode)
    # As if the adder died after its tasks went in, before it kept the answer.
    mongo_queue.store._keys.update_one({"_id": "k"}, {"$set": {"answer": None}})
    with pytest.raises(KeyInProgress):
        mongo_queue.add_once("k", DIGEST, ITEMS, _encode)
    clock.advance(minutes=2)
    assert mongo_queue.add_once("k", DIGEST, ITEMS, _encode) == first
    assert mongo_queue.recall("k", DIGEST) == first
    assert _count(mongo_queue) == 2


def test_an_abandoned_reservation_without_its_tasks_is_taken_over(mongo_queue, clock):
    keys = mongo_queue.store._keys
    keys.insert_one({"_id": "k", "digest": DIGEST, "created": clock.now, "ids": [], "answer": None})
    clock.advance(minutes=2)
    answer = mongo_queue.add_once("k", DIGEST, ITEMS, _encode)
    assert len(json.loads(answer)) == 2 and _count(mongo_queue) == 2
    assert mongo_queue.add_once("k", DIGEST, ITEMS, _encode) == answer


def test_a_failed_add_frees_its_reservation(mongo_queue):
    mongo_queue.add([{"party": "RecurringTask", "data": {"x": 1}}])
    from party.errors import Conflict

    with pytest.raises(Conflict):
        mongo_queue.add_once("k", DIGEST, [{"party": "RecurringTask", "data": {"x": 1}}], _encode)
    assert mongo_queue.store.key_record("k") is None


def test_a_slot_held_by_another_claimer_is_skipped(clock):
    from party.stores.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient().get_database("p").get_collection("tasks"))
    queue = TaskQueue(store, discover([str(Path(__file__).parent / "limited_handlers")]),
                      clock=clock)  # fmt: skip
    a, b, c = queue.add(
        [{"party": "TwoAtATime", "timestamp": clock.now - timedelta(seconds=1)}] * 3
    )
    # Another claimer holds slot 0 (a task running under it).
    store._tasks.update_one({"_id": __import__("bson").ObjectId(a.id)},
                            {"$set": {"status": "running", "slot": "TwoAtATime#0"}})  # fmt: skip
    got = queue.claim(5)
    assert [t.id for t in got] == [b.id]
    assert store._tasks.find_one({"_id": __import__("bson").ObjectId(b.id)})["slot"] == (
        "TwoAtATime#1"
    )
    assert queue.claim(5) == []
    assert queue.stats()["parties"]["TwoAtATime"][Status.RUNNING] == 2
    store.close()
