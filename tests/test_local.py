"""``party.open``: adding tasks in-process, under exactly the rules of ``POST /tasks``.

The same bad input is sent through the handle and over HTTP to a server on the same store file
(``ServerThread``): both refuse it with the same message and index and write nothing. Tasks come
back as ``BlockingHTTPClient`` returns them. Then threads, a fork after ``open``, and a real
``python scheduler/`` woken by an in-process add.
"""

import json
import os
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

import party
from party.admission import ITEM_FIELDS
from party.client import PartyHTTPError
from party.errors import Conflict, NotFound, ValidationError
from party.local import LocalQueue
from party.model import Outcome, Status
from party.queue import error_info
from party.registry import discover
from party.timestamps import system_now
from tests.serving import HANDLERS, ServerThread
from tests.test_scheduler_process import Schedulers, wait_listening, wait_until

GOOD = {"party": "Noop", "data": {"ok": True}}


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path / 'party.db'}"


@pytest.fixture
def handle(store_url, monkeypatch):
    monkeypatch.setenv("PARTY_TASKS", str(HANDLERS))
    with party.open(store_url) as queue:
        yield queue


@pytest.fixture
def server(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock").start()
    yield server
    server.stop()


def _client(server):
    from party.client import BlockingHTTPClient

    return BlockingHTTPClient(server.sock)


def total(queue: LocalQueue) -> int:
    with queue._using() as q:
        return sum(q.stats()["statuses"].values())


# -- every rule of POST /tasks, with the HTTP answer's words ---------------------------------

BAD_BATCHES = [
    ("unknown handler", [GOOD, {"party": "Nope"}]),
    ("missing party", [GOOD, {"data": {}}]),
    ("party not a string", [{"party": 5}]),
    ("empty party", [{"party": ""}]),
    ("non-object data", [GOOD, {"party": "Noop", "data": [1]}]),
    ("string data", [{"party": "Noop", "data": "x"}]),
    ("bad timestamp", [GOOD, {"party": "Noop", "timestamp": "soon"}]),
    ("boolean timestamp", [{"party": "Noop", "timestamp": True}]),
    ("timestamp before 1970", [{"party": "Noop", "timestamp": -1}]),
    ("bad extended JSON", [{"party": "Noop", "timestamp": {"$date": {"$numberLong": "x"}}}]),
    ("unknown field", [GOOD, {"party": "Noop", "when": 1}]),
    ("two unknown fields", [{"party": "Noop", "a": 1, "b": 2}]),
    ("$ key", [GOOD, {"party": "Noop", "data": {"$set": 1}}]),
    ("nested $ key", [{"party": "Noop", "data": {"a": [{"$x": 1}]}}]),
    ("NUL in a key", [{"party": "Noop", "data": {"a\u0000b": 1}}]),
    ("integer past 64 bits", [{"party": "Noop", "data": {"n": 2**64}}]),
    ("nested too deep", [{"party": "Noop", "data": json.loads('{"a":' * 101 + "1" + "}" * 101)}]),
    ("item not an object", [GOOD, "Noop"]),
    ("item null", [None]),
    ("item an array", [["Noop"]]),
]  # fmt: skip


@pytest.mark.parametrize("items", [b for _, b in BAD_BATCHES], ids=[n for n, _ in BAD_BATCHES])
def test_bad_input_raises_the_message_and_index_of_the_http_answer(handle, server, items):
    with _client(server) as con:
        with pytest.raises(PartyHTTPError) as http:
            con.add_many(items)
    with pytest.raises(ValidationError) as local:
        handle.add_many(items)
    assert http.value.status == 400
    assert (str(local.value), local.value.index) == (http.value.message, http.value.index)
    assert total(handle) == 0  # all or nothing, both ways


def test_a_bad_item_anywhere_in_a_batch_adds_nothing(handle):
    items = [GOOD] * 5 + [{"party": "Noop", "data": {"$x": 1}}] + [GOOD] * 5
    with pytest.raises(ValidationError) as info:
        handle.add_many(items)
    assert info.value.index == 5 and info.value.field == "data"
    assert total(handle) == 0
    assert len(handle.add_many([GOOD] * 5)) == 5


def test_add_takes_the_arguments_of_the_client_and_checks_them_alike(handle):
    with pytest.raises(ValidationError, match=r"^item 0: unknown handler 'Nope'; known handlers: "):
        handle.add("Nope")
    with pytest.raises(ValidationError, match=r"^item 0: 'data' must be a JSON object"):
        handle.add("Noop", data=[1])
    with pytest.raises(ValidationError, match=r"^item 0: bad 'timestamp'"):
        handle.add("Noop", timestamp="soon")
    with pytest.raises(ValidationError, match="'\\$set' is not accepted"):
        handle.add("Noop", data={"$set": 1})
    with pytest.raises(ValidationError, match="add_many takes a list of task objects, got a dict"):
        handle.add_many(GOOD)
    assert handle.add_many([]) == []
    assert total(handle) == 0


def test_a_live_recurring_singleton_is_a_conflict_with_the_http_words(handle, server):
    with _client(server) as con:
        con.add("Every5", {"s": 1, "t": 2})
        with pytest.raises(PartyHTTPError) as http:
            con.add("Every5", {"t": 2, "s": 1})
    with pytest.raises(Conflict) as local:
        handle.add("Every5", data={"t": 2, "s": 1})  # the same data, keys in another order
    assert http.value.status == 409
    assert (str(local.value), local.value.index) == (http.value.message, http.value.index)
    # Two of a kind in one batch, or one beside a live one: nothing of the batch is written.
    with pytest.raises(Conflict) as info:
        handle.add_many([GOOD, {"party": "Every5", "data": {"u": 1}}] * 2)
    assert info.value.index == 3
    with pytest.raises(Conflict):
        handle.add_many([GOOD, {"party": "Every5", "data": {"s": 1, "t": 2}}])
    assert total(handle) == 1
    assert isinstance(local.value, party.TaskException)


def test_get_and_delete_raise_what_the_http_answers_say(handle, server):
    task = handle.add("Noop")
    with _client(server) as con:
        for call in ("get", "delete"):
            for task_id in ("123", "0" * 24, "x" * 60):
                with pytest.raises(PartyHTTPError) as http:
                    getattr(con, call)(task_id)
                error = NotFound if http.value.status == 404 else ValidationError
                with pytest.raises(error) as local:
                    getattr(handle, call)(task_id)
                assert str(local.value) == http.value.message
    # A completed task cannot be deleted: 409 over HTTP, Conflict here.
    with handle._using() as queue:
        (claimed,) = queue.claim(1)
        now = system_now()
        queue.record([Outcome(claimed, ok=True, started_on=now, finished_on=now, result=7)])
    with _client(server) as con, pytest.raises(PartyHTTPError) as http:
        con.delete(task["_id"])
    with pytest.raises(Conflict) as local:
        handle.delete(task["_id"])
    assert str(local.value) == http.value.message


def test_item_fields_are_those_the_wire_declares():
    from party.server import shapes

    assert tuple(shapes.ITEM_FIELDS) == ITEM_FIELDS


# -- what comes back -------------------------------------------------------------------------------


def same(local, over_http):
    """The handle's task is the HTTP client's, but for ``waiting`` (which needs the live
    schedulers' heartbeats: not read by the handle yet)."""
    over_http = dict(over_http)
    over_http.pop("waiting", None)
    return local == over_http


def test_tasks_come_back_as_the_http_client_returns_them(handle, server):
    added = handle.add("Noop", data={"a": [1, (2, 3)], "b": None})
    with _client(server) as con:
        assert same(added, con.get(added["_id"]))
        over_http = con.add("Noop", {"k": "v"})
        assert same(handle.get(over_http["_id"]), over_http)
        # A run's fields (result, started and completed times, an error) alike.
        with handle._using() as queue:
            runs = queue.claim(2)
            now = system_now()
            queue.record(
                [
                    Outcome(runs[0], ok=True, started_on=now, finished_on=now, result={"r": 1}),
                    Outcome(runs[1], ok=False, started_on=now, finished_on=now,
                            error=error_info("E", "m", at=now)),
                ]
            )  # fmt: skip
        for task in (added, over_http):
            assert same(handle.get(task["_id"]), con.get(task["_id"]))
        deleted = handle.delete(over_http["_id"])
        assert deleted["last_error"]["message"] == "m"
        assert same(deleted, con.get(over_http["_id"]))
    assert isinstance(added["timestamp"], datetime) and added["timestamp"].tzinfo is None
    assert added["data"] == {"a": [1, [2, 3]], "b": None}
    assert set(added) == {"_id", "party", "data", "timestamp", "created", "attempts", "status",
                          "is_recurring", "last_run_on"}  # fmt: skip


def test_the_answer_does_not_share_the_callers_data(handle):
    data = {"n": 1, "l": [1, {"m": (2,)}]}
    task = handle.add("Noop", data=data)
    data["n"] = 2
    data["l"][1]["m"] = 3
    assert task["data"] == {"n": 1, "l": [1, {"m": [2]}]} == handle.get(task["_id"])["data"]


def test_data_of_subclasses_comes_back_as_plain_json(handle):
    import enum
    from collections import OrderedDict

    class Level(enum.IntEnum):
        HIGH = 3

    data = {"level": Level.HIGH, "o": OrderedDict(x=1.5), "t": ("a", "b")}
    task = handle.add("Noop", data=data)
    assert task["data"] == json.loads(json.dumps(data)) == handle.get(task["_id"])["data"]
    assert type(task["data"]["level"]) is int and type(task["data"]["o"]) is dict


@pytest.mark.parametrize(
    "given",
    [
        datetime(2031, 5, 6, 7, 8, 9, 123456),
        datetime(2031, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
        datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "2031-05-06T07:08:09.123456Z",
        "2031-05-06T12:38:09.123456+05:30",
        {"$date": "2031-05-06T07:08:09.123456Z"},
        datetime(2031, 5, 6, 7, 8, 9, 123456).replace(tzinfo=UTC).timestamp(),
    ],
)
def test_a_timestamp_is_any_form_the_wire_takes_or_a_datetime(handle, given):
    task = handle.add("Noop", timestamp=given)
    assert task["timestamp"] == datetime(2031, 5, 6, 7, 8, 9, 123456)
    assert handle.get(task["_id"])["timestamp"] == task["timestamp"]


def test_open_reads_only_the_store_and_the_handlers_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTY_TASKS", str(HANDLERS))
    for name, bad in [("PARTY_PORT", "abc"), ("PARTY_WORKERS", "0"), ("PARTY_KEEP_COMPLETED", "x")]:
        monkeypatch.setenv(name, bad)  # the server's and the scheduler's: not party.open's
    with party.open(f"sqlite:///{tmp_path / 'p.db'}") as queue:
        assert queue.add("Noop")["status"] == "queued"


def test_open_reads_the_store_and_the_handlers_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARTY_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.delenv("PARTY_TASKS", raising=False)
    with party.open() as queue:
        queue.add("SampleTask")
        with pytest.raises(ValidationError, match="unknown handler 'Noop'"):
            queue.add("Noop")  # tests/handlers is not loaded without PARTY_TASKS
    assert (tmp_path / "env.db").exists()
    monkeypatch.setenv("PARTY_TASKS", str(HANDLERS))
    with party.open(f"sqlite:///{tmp_path / 'arg.db'}") as queue:  # the argument wins
        queue.add("Noop")
    assert (tmp_path / "arg.db").exists()


def test_a_bad_store_url_is_a_config_error_at_open(monkeypatch):
    from party.errors import ConfigError

    with pytest.raises(ConfigError, match="not understood"):
        party.open("postgres://nowhere/db")


def test_a_closed_handle_refuses_calls(handle):
    handle.close()
    handle.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        handle.add("Noop")


# -- threads and forks -----------------------------------------------------------------------------


def test_threads_add_at_once_and_every_task_lands(handle):
    errors, ids = [], []
    start = threading.Barrier(8)

    def add(k):
        try:
            start.wait(10)
            for i in range(40):
                if i % 4 == 0:
                    ids.extend(t["_id"] for t in handle.add_many([{"party": "Noop"}] * 3))
                else:
                    ids.append(handle.add("Noop", data={"k": k, "i": i})["_id"])
                    handle.get(ids[-1])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(ids) == len(set(ids)) == 8 * (30 + 10 * 3) == total(handle)


def _in_child(work):
    """Run ``work()`` in a forked child; return what it returned (JSON) or raise its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read)
            out = json.dumps({"ok": work()})
        except BaseException as exc:  # noqa: BLE001
            out, code = json.dumps({"error": repr(exc)}), 1
        os.write(write, out.encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        answer = json.loads(f.read() or '{"error": "no answer"}')
    _, status = os.waitpid(pid, 0)
    assert "error" not in answer, answer["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return answer["ok"]


@pytest.mark.processes  # forks
def test_a_fork_after_open_gives_the_child_its_own_connection(handle):
    first = handle.add("Noop", data={"who": "parent before"})
    before = handle._queue.store

    def child():
        task = handle.add("Noop", data={"who": "child"})
        store = handle._queue.store
        assert store is not before and store._db is not before._db
        assert handle.get(first["_id"])["_id"] == first["_id"]
        handle.close()  # closes the child's own connection only
        return task["_id"]

    child_id = _in_child(child)
    # The parent's connection was closed before the fork and is opened again here.
    after = handle.add("Noop", data={"who": "parent after"})
    assert handle._queue.store is not before
    assert handle.get(child_id)["data"] == {"who": "child"}
    assert after["_id"] != child_id and total(handle) == 3


@pytest.mark.processes  # forks
def test_forking_while_other_threads_add_loses_nothing(handle):
    stop = threading.Event()
    added = []

    def keep_adding():
        while not stop.is_set():
            added.append(handle.add("Noop")["_id"])

    threads = [threading.Thread(target=keep_adding) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(added) >= 20, 10, "the first adds")
        children = [_in_child(lambda: handle.add("Noop")["_id"]) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with handle._using() as queue:
        for task_id in [*added, *children]:
            assert queue.get(task_id).status is Status.QUEUED
    assert total(handle) == len(added) + 3


def test_a_process_that_inherited_an_open_store_opens_its_own_and_never_closes_that_one(handle):
    # As after a fork that did not run Python's fork hooks: the handle sees another pid.
    inherited = handle._queue.store
    handle._pid = -1
    task = handle.add("Noop")
    assert handle._queue.store is not inherited
    handle.close()
    assert inherited.get(task["_id"]) is not None  # still open: never closed by this process
    inherited.close()


# -- the wake-up -----------------------------------------------------------------------------------


@pytest.mark.processes
def test_a_task_added_in_process_runs_at_once_with_a_30_s_poll_interval(tmp_path, monkeypatch):
    sched = Schedulers(tmp_path, discover([str(HANDLERS)]))
    try:
        sched.start(poll=30)
        wait_listening(sched)
        monkeypatch.setenv("PARTY_TASKS", str(HANDLERS))
        with party.open(sched.url) as queue:
            task = queue.add("Note", data={"n": "now", "log": str(sched.log)})
            # Well within the 30 s the scheduler sleeps when nothing wakes it.
            wait_until(lambda: sched.runs(), 10, "the woken run")
            assert sched.runs()[0]["id"] == task["_id"]
            wait_until(lambda: queue.get(task["_id"])["status"] == "completed", 10, "completion")
    finally:
        sched.close()
