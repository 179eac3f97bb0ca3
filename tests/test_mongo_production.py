"""Issue 16: the Mongo store under what production does to it. One test (or two) per defect, each
failing on the store of 7924709: over mongomock, through ``FaultyCollection`` (errors before,
inside or after a call, a competing scheduler), and again against a real server when
PARTY_TEST_MONGODB_URI names one (the ``raw`` fixture). Tests that need ``explain()`` or a real
change stream run on a real server only.
"""

from __future__ import annotations

import os
import select
import uuid
from datetime import datetime, timedelta

import mongomock
import pytest
from mongo_faults import FaultyCollection
from pymongo.errors import (
    AutoReconnect,
    CursorNotFound,
    DocumentTooLarge,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    WriteConcernError,
)

from party.errors import ConfigError, Conflict, StoreUnavailable, ValidationError
from party.model import NewTask, Outcome, Status, Task, Write, new_id
from party.queue import TaskQueue
from party.stores.mongo import MongoStore

T0 = datetime(2030, 1, 1, 12, 0, 0)
MONGODB_URI = os.environ.get("PARTY_TEST_MONGODB_URI")


@pytest.fixture(params=["mongomock", "mongodb"])
def raw(request):
    """A fresh, empty tasks collection: mongomock, or a real server's (skipped without one)."""
    if request.param == "mongomock":
        yield mongomock.MongoClient().get_database("party_test").get_collection("tasks")
        return
    if not MONGODB_URI:
        pytest.skip("set PARTY_TEST_MONGODB_URI=mongodb://host:port/db to test a real MongoDB")
    from party.stores.mongo import connect

    # A collection without Party's indexes, as mongomock's is: each test opens its stores.
    client, tasks = connect(MONGODB_URI, collection=f"tasks_{uuid.uuid4().hex[:8]}")
    yield tasks
    tasks.drop()
    client.close()


@pytest.fixture
def faulty(raw):
    return FaultyCollection(raw)


def make(party="Noop", at=T0, **fields):
    return Task(id=new_id(), party=party, data=fields.pop("data", {}), timestamp=at, created=T0,
                run_at=fields.pop("run_at", at), **fields)  # fmt: skip


def lease_at(now=T0):
    return now + timedelta(seconds=60)


# -- 1. a batch add is all or nothing for readers --------------------------------------------


def test_no_task_of_a_batch_is_claimable_before_the_whole_batch_is_in(raw):
    rival = MongoStore(raw)
    seen = []

    def insert_then_look(docs, *args, **kwargs):
        # A competing worker claims and reads right after the documents land, before the add
        # has returned (and before a failure could still make it answer "nothing added").
        result = raw.insert_many(docs, *args, **kwargs)
        seen.extend(rival.claim(10, T0, lease_at(), "rival"))
        seen.extend(t for t in (rival.get(str(d["_id"])) for d in docs) if t is not None)
        return result

    store = MongoStore(_Patched(raw, insert_many=insert_then_look))
    store.insert_many([make(), make(), make()])
    assert seen == []
    assert len(rival.claim(10, T0, lease_at(), "after")) == 3


@pytest.mark.parametrize("method, when", [("insert_many", "after"), ("update_many", "before"),
                                          ("update_many", "after")])  # fmt: skip
def test_a_batch_add_cut_short_by_a_failover_leaves_nothing_behind(faulty, method, when):
    store = MongoStore(faulty)
    faulty.fail(method, when, AutoReconnect("connection reset by the election"))
    batch = [make(), make(), make()]
    with pytest.raises(StoreUnavailable):
        store.insert_many(batch)
    assert all(store.get(t.id) is None for t in batch)
    assert store.claim(10, T0, lease_at(), "tok") == []
    assert faulty._inner.count_documents({}) == 0


# -- 2. claims are never orphaned; replayed writes that landed count ----------------------------


def _is_claim(query, update, *args, **kwargs):
    return "$inc" in update and update["$inc"].get("attempts") == 1


def _fail_claim_writes(faulty, when, error, **kw):
    for method in ("find_one_and_update", "update_many"):  # whichever the claim uses
        faulty.fail(method, when, error, match=_is_claim, **kw)


def test_a_claim_whose_answer_was_lost_hands_its_task_back_at_once(faulty):
    store = MongoStore(faulty)
    (task,) = store.insert_many([make()])
    _fail_claim_writes(faulty, "after", AutoReconnect("primary stepped down"))
    with pytest.raises(StoreUnavailable):
        store.claim(5, T0, lease_at(), "lost-token")
    back = store.get(task.id)
    assert back.status == Status.QUEUED and back.attempts == 0 and back.lease is None
    assert [t.id for t in store.claim(5, T0, lease_at(), "next")] == [task.id]


def test_a_claim_cut_short_inside_its_update_hands_back_what_it_took(faulty):
    store = MongoStore(faulty)
    tasks = store.insert_many([make(at=T0 - timedelta(seconds=3 - i)) for i in range(3)])
    faulty.fail("update_many", "inside", AutoReconnect("step-down"), keep=2, match=_is_claim)
    with pytest.raises(StoreUnavailable):
        store.claim(3, T0, lease_at(), "tok")
    back = [store.get(t.id) for t in tasks]
    assert [(t.status, t.attempts, t.lease) for t in back] == [(Status.QUEUED, 0, None)] * 3


def test_a_claim_cut_short_keeps_what_it_won_and_hands_back_the_rest(raw, faulty):
    store, rival = MongoStore(faulty), MongoStore(raw)
    tasks = store.insert_many([make(at=T0 - timedelta(seconds=6 - i)) for i in range(6)])
    # A rival takes the head as the batch is written; taking the next one alone, the answer is
    # lost after the task was claimed.
    faulty.fail("update_many", "before", None, match=_is_claim,
                hook=lambda: rival.claim(1, T0, lease_at(), "rival"))  # fmt: skip
    faulty.fail("find_one_and_update", "after", NotPrimaryError("not primary"), match=_is_claim)
    won = store.claim(4, T0, lease_at(), "tok")
    assert [t.id for t in won] == [t.id for t in tasks[1:4]]
    lost, untouched = store.get(tasks[4].id), store.get(tasks[5].id)
    assert (lost.status, lost.attempts, lost.lease) == (Status.QUEUED, 0, None)
    assert (untouched.status, untouched.attempts) == (Status.QUEUED, 0)


@pytest.mark.parametrize("code", [189, 11602, 91])
def test_write_concern_errors_of_a_step_down_are_store_unavailable(faulty, code):
    store = MongoStore(faulty)
    (task,) = store.insert_many([make()])
    error = WriteConcernError("stepped down", code=code, details={"code": code})
    faulty.fail("update_one", "after", error)
    faulty.fail("find_one_and_update", "after", error)
    with pytest.raises(StoreUnavailable):
        store.write_many([Write(task.id, {"attempts": 1})])
    with pytest.raises(StoreUnavailable):
        store.update(Write(task.id, {"attempts": 2}))


def test_a_replayed_completion_that_had_landed_keeps_its_follow_ups(faulty, registry):
    store = MongoStore(faulty)
    queue = TaskQueue(store, registry, lease_seconds=60, clock=lambda: T0)
    queue.add([{"party": "Noop", "timestamp": T0}])
    (task,) = queue.claim(1, now=T0)
    outcome = Outcome(task, ok=True, started_on=T0, finished_on=T0, result=1,
                      follow_ups=[NewTask("Noop")])  # fmt: skip
    for method in ("update_one", "find_one_and_update"):
        faulty.fail(method, "after", AutoReconnect("connection closed after the write"))
    with pytest.raises(StoreUnavailable):
        queue.record([outcome])
    # The worker replays the record once the store answers again (worker._record).
    assert queue.record([outcome]) == [Status.COMPLETED]
    assert len(store.query(status=Status.QUEUED)) == 1  # the follow-up was added


# -- 3. a client-side operation timeout ------------------------------------------------------


def test_every_operation_has_a_client_side_timeout_that_the_url_may_change():
    from party.stores.mongo_client import client_options_for

    assert client_options_for("mongodb://h/db")["timeoutMS"] == 10000
    assert "timeoutMS" not in client_options_for("mongodb://h/db?timeoutMS=2500")
    assert client_options_for("mongodb://h/db?serverSelectionTimeoutMS=700")["timeoutMS"] == 700


TIMEOUTS = [NetworkTimeout("timed out"), ExecutionTimeout("operation exceeded time limit", code=50)]


@pytest.mark.parametrize("error", TIMEOUTS)
def test_an_operation_that_times_out_is_store_unavailable(faulty, error):
    store = MongoStore(faulty)
    faulty.fail("find_one", "before", error)
    with pytest.raises(StoreUnavailable):
        store.get(new_id())


# -- 4. errors that escaped the guard ------------------------------------------------------------


def test_an_add_bson_cannot_hold_is_a_400_naming_its_item(faulty):
    store = MongoStore(faulty)
    faulty.fail("insert_many", "before", DocumentTooLarge("BSON document too large"))
    batch = [make(), make(data={"blob": "x" * (17 * 1024 * 1024)})]
    with pytest.raises(ValidationError) as info:
        store.insert_many(batch)
    assert info.value.index == 1
    faulty.fail("insert_many", "before", OverflowError("MongoDB can only handle up to 8-byte ints"))
    with pytest.raises(ValidationError) as info:
        store.insert_many([make(), make(), make(data={"n": 2**64})])
    assert info.value.index == 2
    assert faulty._inner.count_documents({}) == 0


def test_an_unstorable_result_fails_its_task_once_and_spares_the_rest_of_the_batch(faulty):
    store = MongoStore(faulty)
    a, b = store.insert_many([make(), make()])
    a, b = store.claim(2, T0, lease_at(), "tok")
    done = {"status": Status.COMPLETED, "started_on": T0, "completed_on": T0, "lease": None,
            "lease_expires": None}  # fmt: skip
    writes = [
        Write(a.id, {**done, "result": "x" * 100}, lease="tok", statuses=(Status.RUNNING,)),
        Write(b.id, {**done, "result": "ok"}, lease="tok", statuses=(Status.RUNNING,)),
    ]
    faulty.fail("update_one", "before", DocumentTooLarge("BSON document too large (17 MiB)"))
    assert store.write_many(writes) == [True, True]
    failed, completed = store.get(a.id), store.get(b.id)
    assert failed.status == Status.FAILED and failed.last_error["type"] == "UnstorableResult"
    assert failed.result is None and writes[0].fields["status"] == Status.FAILED
    assert completed.status == Status.COMPLETED and completed.result == "ok"


def test_a_lost_cursor_is_store_unavailable(faulty):
    store = MongoStore(faulty)
    faulty.fail("find", "before", CursorNotFound("cursor id not found", code=43))
    with pytest.raises(StoreUnavailable):
        store.query()


# -- 5. index conflicts stop the store with the index named ---------------------------------------


def test_partys_index_keys_under_another_name_stop_the_store_naming_it(raw):
    raw.create_index([("singleton", 1)], name="legacy_singleton", unique=True,
                     partialFilterExpression={"singleton": {"$exists": True}})  # fmt: skip
    with pytest.raises(ConfigError, match="legacy_singleton"):
        MongoStore(raw)


def test_partys_index_name_with_other_options_stops_the_store_naming_it(raw):
    raw.create_index([("singleton", 1)], name="tasks_singleton")  # not unique
    with pytest.raises(ConfigError, match="tasks_singleton.*dropIndex"):
        MongoStore(raw)


def test_a_store_whose_indexes_are_in_place_creates_none(faulty):
    MongoStore(faulty)
    faulty.calls.clear()
    MongoStore(faulty)  # a worker opening the store
    assert faulty.called("create_index") == [] and len(faulty.called("index_information")) == 1


# -- 6. reads from the primary ------------------------------------------------------------------


def test_reads_go_to_the_primary_whatever_the_url_asks():
    from pymongo import ReadPreference

    from party.stores.mongo import connect

    client, tasks = connect("mongodb://127.0.0.1:9/db?readPreference=secondaryPreferred")
    try:
        assert tasks.read_preference == ReadPreference.PRIMARY
        assert tasks.write_concern.document == {"w": "majority"}
    finally:
        client.close()


# -- 7. one change stream per scheduler; claims that do not starve ------------------------------


class FakeStream:
    """A change stream that yields what a test feeds it, then breaks when told."""

    def __init__(self, changes, *, break_after=False):
        self.changes = list(changes)
        self.break_after = break_after
        self.alive = True
        self.resume_token = None

    def try_next(self):
        if self.changes:
            change = self.changes.pop(0)
            self.resume_token = {"_data": change}
            return {"_id": self.resume_token}
        if self.break_after:
            raise AutoReconnect("the election took longer than server selection")
        import time

        time.sleep(0.01)
        return None

    def close(self):
        self.alive = False


class Watched(FaultyCollection):
    """A collection with a change stream (mongomock has none): each watch() pops a FakeStream."""

    def __init__(self, inner, streams):
        super().__init__(inner)
        self.streams = list(streams)
        self.watches = []

    def watch(self, pipeline, **kwargs):
        self.watches.append(kwargs)
        return self.streams.pop(0) if self.streams else FakeStream([])


def _readable(listener, timeout=5.0):
    return bool(select.select([listener.fileno()], [], [], timeout)[0])


def test_the_workers_of_a_scheduler_share_its_one_change_stream(raw):
    collection = Watched(raw, [FakeStream([]), FakeStream(["one"])])
    workers = [MongoStore(collection) for _ in range(4)]
    listeners = [w.listen() for w in workers]
    assert collection.watches == []  # no stream per worker
    scheduler = MongoStore(collection)
    relay = scheduler.relay_wakeups()
    try:
        assert relay is not None
        assert all(_readable(listener) for listener in listeners)  # one change wakes them all
        assert len(collection.watches) == 2  # the probe, then the one stream
    finally:
        scheduler.close()
        for listener, worker in zip(listeners, workers, strict=True):
            listener.close()
            worker.close()


def test_a_claim_that_loses_every_race_for_the_head_still_takes_due_tasks(raw, faulty):
    store, rival = MongoStore(faulty), MongoStore(raw)
    store.insert_many([make(at=T0 - timedelta(seconds=30 - i)) for i in range(20)])
    for method in ("find_one_and_update", "update_many"):
        # Before each write of the claim, another scheduler takes the three tasks at the head.
        faulty.fail(method, "before", None, times=20, match=_is_claim,
                    hook=lambda: rival.claim(3, T0, lease_at(), "rival"))  # fmt: skip
    won = store.claim(3, T0, lease_at(), "mine")
    assert len(won) == 3 and all(t.lease == "mine" for t in won)


# -- 8. the change stream is re-opened from its resume token --------------------------------------


def test_a_broken_change_stream_is_reopened_from_its_resume_token(raw, caplog):
    collection = Watched(
        raw, [FakeStream([]), FakeStream(["t1"], break_after=True), FakeStream(["t2"])]
    )
    worker = MongoStore(collection)
    listener = worker.listen()
    scheduler = MongoStore(collection)
    relay = scheduler.relay_wakeups()
    try:
        from conftest import wait_for

        wait_for(lambda: len(collection.watches) >= 3, what="the stream re-opened")
        assert collection.watches[2]["resume_after"] == {"_data": "t1"}
        wait_for(lambda: relay.token == {"_data": "t2"}, what="the change after the break")
        assert _readable(listener)
        assert "re-opening" in caplog.text
    finally:
        scheduler.close()
        listener.close()
        worker.close()


# -- 9. queries the indexes serve ---------------------------------------------------------------


def test_listings_without_a_status_ask_for_the_visible_statuses_an_index_can_merge(faulty):
    store = MongoStore(faulty)
    assert "tasks_party" in faulty.index_information()
    store.insert_many([make(party="A"), make(party="B")])
    faulty.calls.clear()
    assert len(store.query()) == 2 and len(store.query(party="A")) == 1
    filters = [args[0] for args, _ in faulty.called("find")]
    assert all(f["status"] == {"$in": list(Status)} for f in filters)


def test_each_query_of_the_api_uses_an_index(raw):
    if isinstance(raw, mongomock.Collection):
        pytest.skip("mongomock has no explain(): a real server (PARTY_TEST_MONGODB_URI) shows it")
    store = MongoStore(raw)
    store.insert_many([make(party=p, at=T0 + timedelta(seconds=i)) for i, p in
                       enumerate("ABCAB" * 20)])  # fmt: skip
    visible = {"$in": [str(s) for s in Status]}

    def plan(query, sort):
        text = str(raw.find(query).sort(sort).limit(10).explain()["queryPlanner"]["winningPlan"])
        return "IXSCAN" in text and "COLLSCAN" not in text

    from party.stores.mongo_codec import ORDER, due

    assert plan({"status": visible}, ORDER)
    assert plan({"status": visible, "party": "A"}, ORDER)
    assert plan({"status": "failed", "party": "A"}, ORDER)
    assert plan(due(T0), ORDER)
    from party.stores.mongo_codec import claimable

    assert plan(claimable(T0), ORDER)
    stats = raw.database.command(
        "aggregate", raw.name, explain=True,
        pipeline=[{"$match": {"status": visible}}, {"$sort": {"party": 1, "status": 1}},
                  {"$project": {"_id": 0, "party": 1, "status": 1}},
                  {"$group": {"_id": {"party": "$party", "status": "$status"}, "n": {"$sum": 1}}}],
    )  # fmt: skip
    assert "COLLSCAN" not in str(stats) and "IXSCAN" in str(stats)
    store.close()


def test_a_task_waiting_out_a_retry_delay_is_outside_the_claims_index_range(faulty):
    store = MongoStore(faulty)
    info = faulty.index_information()["tasks_ready"]
    assert info["partialFilterExpression"] == {"status": "queued", "ready": True}
    waiting, due_one = store.insert_many([make(at=T0 - timedelta(seconds=9)), make()])
    (claimed,) = store.claim(1, T0, lease_at(), "tok")
    retry = {"status": Status.QUEUED, "run_at": T0 + timedelta(seconds=5), "lease": None,
             "lease_expires": None}  # fmt: skip
    assert store.update(Write(claimed.id, retry, lease="tok")) is not None
    faulty.calls.clear()
    assert [t.id for t in store.claim(5, T0, lease_at(), "t2")] == [due_one.id]
    claims = [
        args[0]
        for method in ("find", "update_many", "find_one_and_update")
        for args, _ in faulty.called(method)
        if "timestamp" in args[0]  # the queries for due tasks (not the read-back by token)
    ]
    assert claims and all(query.get("ready") is True for query in claims)  # the index's range
    later = T0 + timedelta(seconds=5)
    assert [t.id for t in store.claim(5, later, lease_at(later), "t3")] == [waiting.id]


def test_queued_tasks_written_before_the_ready_mark_stay_claimable(raw):
    at = T0 - timedelta(seconds=1)
    old = {"party": "Noop", "data": {}, "timestamp": at, "created": at, "run_at": at,
           "attempts": 0, "status": "queued"}  # fmt: skip
    delayed = {**old, "run_at": T0 + timedelta(seconds=5), "attempts": 1}
    MongoStore(raw)
    raw.drop_index("tasks_ready")  # a collection of the store before the mark
    raw.drop_index("tasks_delayed")
    raw.insert_many([dict(old), delayed])
    store = MongoStore(raw)
    assert len(store.claim(5, T0, lease_at(), "tok")) == 1
    assert len(store.claim(5, T0 + timedelta(seconds=5), lease_at(), "t2")) == 1


# -- 10. an id clash is not a singleton conflict -------------------------------------------------


def test_an_id_clash_is_not_reported_as_a_singleton_conflict(raw):
    store = MongoStore(raw)
    task = make()
    store.insert_many([task])
    with pytest.raises(StoreUnavailable, match="already stored") as info:
        store.insert_many([make(), Task(task.id, "Noop", {}, T0, T0, T0)])
    assert not isinstance(info.value, Conflict)
    store.insert_many([make(singleton="k")])
    with pytest.raises(Conflict):
        store.insert_many([make(singleton="k")])


class _Patched:
    """``inner`` with some methods replaced."""

    def __init__(self, inner, **methods):
        self._inner = inner
        self._methods = methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._inner, name)


class _ReplicaSetClient:
    """What the store asks of a client on a replica set: its topology and sessions (recorded)."""

    class topology_description:  # noqa: N801 - pymongo's attribute name
        topology_type_name = "ReplicaSetWithPrimary"

    def __init__(self):
        self.transactions = []

    def start_session(self):
        client = self

        class Session:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def start_transaction(self, **options):
                client.transactions.append(options)
                return self

        return Session()

    def close(self):
        pass


def test_on_a_replica_set_a_batch_is_one_transaction_with_the_majority_write_concern(raw):
    if not isinstance(raw, mongomock.Collection):
        pytest.skip("a fake session: on a real replica set every add goes through the real one")
    from party.stores.mongo import connect

    _, raw = connect(f"mongomock://rs-{uuid.uuid4().hex[:8]}/party")  # w=majority, as from a URL
    client = _ReplicaSetClient()
    inserts = []

    def insert_many(docs, *args, session=None, **kwargs):  # mongomock has no sessions
        inserts.append((session, [d["status"] for d in docs]))
        return raw.insert_many(docs, *args, **kwargs)

    faulty = FaultyCollection(_Patched(raw, insert_many=insert_many))
    store = MongoStore(faulty, client=client)
    faulty.calls.clear()
    batch = store.insert_many([make(), make()])
    assert [o["write_concern"].document for o in client.transactions] == [{"w": "majority"}]
    assert len(inserts) == 1 and inserts[0][0] is not None and inserts[0][1] == ["queued"] * 2
    assert faulty.called("update_many") == []  # no second write: the transaction is the batch
    assert [t.id for t in store.query()] == [t.id for t in batch]
