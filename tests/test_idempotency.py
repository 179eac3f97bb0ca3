"""Idempotent adds: ``Idempotency-Key`` on ``POST /tasks``, ``TaskQueue.recall``/``add_once`` on
every store, the 400/409/422 answers, a race of one key, the 24 h expiry and the client's key on a
retried POST."""

import asyncio
import hashlib
import http.client
import json
import socket
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest

from party.client import BlockingHTTPClient, PartyHTTPError
from party.errors import KeyInProgress, KeyMismatch, ValidationError
from party.model import Status
from party.queue import KEY_TTL, TaskQueue
from party.server import idempotency
from party.stores.sqlite import SqliteStore
from tests.serving import ServerThread


def _digest(body):
    return hashlib.sha256(body).hexdigest()


def _encode(tasks):
    return json.dumps([t.id for t in tasks]).encode()


ITEMS = [{"party": "Noop", "data": {"n": 1}}, {"party": "Noop", "data": {"n": 2}}]


def _count(queue):
    return sum(queue.stats()["statuses"].values())


# -- the queue, on every store --------------------------------------------------------------------


def test_a_repeat_gets_the_first_answer_and_adds_nothing(queue):
    first = queue.add_once("k-1", _digest(b"body"), ITEMS, _encode)
    assert len(json.loads(first)) == 2 and _count(queue) == 2
    assert queue.recall("k-1", _digest(b"body")) == first
    assert queue.add_once("k-1", _digest(b"body"), ITEMS, _encode) == first
    assert _count(queue) == 2
    assert queue.recall("k-2", _digest(b"body")) is None  # another key is new


def test_the_key_with_another_body_is_refused(queue):
    queue.add_once("k", _digest(b"one"), ITEMS, _encode)
    with pytest.raises(KeyMismatch, match="another request body"):
        queue.recall("k", _digest(b"two"))
    with pytest.raises(KeyMismatch):
        queue.add_once("k", _digest(b"two"), ITEMS, _encode)
    assert _count(queue) == 2


def test_a_refused_add_leaves_the_key_unused(queue):
    with pytest.raises(ValidationError):
        queue.add_once("k", _digest(b"x"), [{"party": "NoSuchHandler"}], _encode)
    assert queue.recall("k", _digest(b"x")) is None
    assert json.loads(queue.add_once("k", _digest(b"x"), ITEMS, _encode))


def test_a_key_older_than_24_hours_is_new(queue, clock):
    first = queue.add_once("k", _digest(b"a"), ITEMS, _encode)
    clock.advance(hours=23)
    assert queue.add_once("k", _digest(b"a"), ITEMS, _encode) == first
    clock.advance(hours=1, seconds=1)
    assert queue.recall("k", _digest(b"b")) is None  # expired: not even the body is compared
    second = queue.add_once("k", _digest(b"b"), ITEMS, _encode)
    assert second != first and _count(queue) == 4
    assert queue.add_once("k", _digest(b"b"), ITEMS, _encode) == second


def test_retention_removes_keys_past_a_day(queue, clock):
    queue.add_once("old", _digest(b"a"), ITEMS, _encode)
    clock.advance(hours=12)
    queue.add_once("young", _digest(b"a"), ITEMS, _encode)
    clock.advance(hours=12, seconds=1)
    assert queue.prune(0, 0) == 1  # tasks kept for ever; only the old key goes
    assert queue.store.key_record("old") is None
    assert queue.store.key_record("young") is not None


def test_two_adds_racing_with_one_key_add_the_batch_once(sqlite_path, registry):
    queues = [TaskQueue(SqliteStore(sqlite_path), registry) for _ in range(8)]
    barrier = threading.Barrier(len(queues))
    answers = []

    def add(queue):
        barrier.wait(5)
        answers.append(queue.add_once("race", _digest(b"same"), ITEMS * 50, _encode))

    threads = [threading.Thread(target=add, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 8 and len(set(answers)) == 1
    assert _count(queues[0]) == 100
    for q in queues:
        q.store.close()


# -- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("idem")
    srv = ServerThread(tmp / "party.db", tmp / "party.sock").start()
    yield srv
    srv.stop()


def _post(server, body, key=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    conn.request("POST", "/tasks", body=body, headers=headers)
    response = conn.getresponse()
    answer = response.status, response.read()
    conn.close()
    return answer


def test_post_with_a_key_is_answered_the_same_201_and_body_and_adds_once(server):
    # Written as the client writes JSON, so that its request below has the same body bytes.
    body = json.dumps({"tasks": [{"party": "Noop", "data": {"x": 1}}] * 3}, separators=(",", ":"))
    body = body.encode()
    before = _count(server.queue)
    status, first = _post(server, body, "order-17")
    assert status == 201 and len(json.loads(first)) == 3
    assert _post(server, body, "order-17") == (201, first)
    assert _count(server.queue) == before + 3
    with BlockingHTTPClient(server.sock) as con:  # the client's keyword sends the same header
        again = con.request("/tasks", None, json.loads(body), "POST", idempotency_key="order-17")
    assert [t["_id"] for t in again] == [t["_id"] for t in json.loads(first)]


def test_the_same_key_with_another_body_is_422(server):
    _post(server, b'{"tasks": [{"party": "Noop"}]}', "k-422")
    status, answer = _post(server, b'{"tasks": [{"party": "Noop"}, {"party": "Noop"}]}', "k-422")
    assert status == 422 and "another request body" in json.loads(answer)["error"]
    # Only the bytes count: the same JSON spelt otherwise is another body.
    assert _post(server, b'{"tasks":[{"party":"Noop"}]}', "k-422")[0] == 422


@pytest.mark.parametrize("key", ["", "a b", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400(server, key):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/tasks")
    conn.putheader("Idempotency-Key", key.encode("utf-8"))
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "30")
    conn.endheaders(b'{"tasks": [{"party": "Noop"}]}')
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 400 and "Idempotency-Key" in answer["error"]


def test_a_refused_batch_keeps_no_answer(server):
    bad = b'{"tasks": [{"party": "Nope"}]}'
    assert _post(server, bad, "k-bad")[0] == 400
    assert _post(server, bad, "k-bad")[0] == 400  # answered anew, not from a kept 400
    assert _post(server, b'{"tasks": [{"party": "Noop"}]}', "k-bad")[0] == 201


def test_a_second_request_while_the_first_is_served_is_409():
    gate = asyncio.Event()

    class Calls:
        async def __call__(self, fn, *args):
            await gate.wait()
            return b"[]"

    ctx = SimpleNamespace(queue=object(), calls=Calls(), stats=SimpleNamespace(wrote=lambda: 0))

    async def scenario():
        first = asyncio.ensure_future(idempotency.add_once(ctx, "busy", b"{}", _encode))
        await asyncio.sleep(0)
        with pytest.raises(KeyInProgress, match="still in progress"):
            await idempotency.add_once(ctx, "busy", b"{}", _encode)
        gate.set()
        assert await first == b"[]"
        assert await idempotency.add_once(ctx, "busy", b"{}", _encode) == b"[]"  # free again

    asyncio.run(scenario())


def test_an_add_in_progress_on_a_store_with_reservations_is_409(queue, clock):
    from party.stores.base import KeyRecord

    queue.store.key_record = lambda key: KeyRecord(_digest(b"a"), clock.now, None)
    with pytest.raises(KeyInProgress):
        queue.recall("k", _digest(b"a"))


# -- the client -----------------------------------------------------------------------------------


class DroppingServer:
    """Answers the first request of a connection with a 201, then reads the next one and closes
    the connection without an answer (a server that died after reading it): records the
    ``Idempotency-Key`` of every request."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.keys = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as stream:
                for answered in (True, False):
                    head = []
                    while (line := stream.readline()) not in (b"\r\n", b""):
                        head.append(line.decode())
                    if not head:
                        break
                    fields = dict(h.split(":", 1) for h in head[1:])
                    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                    stream.read(int(fields["content-length"]))
                    key = fields.get("idempotency-key")
                    self.keys.append(key)
                    if not answered:
                        break
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\n\r\n[]")  # fmt: skip

    def close(self):
        self.listener.close()


def test_the_client_retries_a_dropped_post_with_one_key_from_its_first_try():
    server = DroppingServer()
    try:
        con = BlockingHTTPClient(f"127.0.0.1:{server.port}", timeout=5)
        con.add_many([{"party": "Noop"}])  # a fresh connection: nothing is retried, no key
        con.add_many([{"party": "Noop"}])  # kept alive, dropped after the read, then retried
        con.close()
    finally:
        server.close()
    first, dropped, retried = server.keys[:3]
    assert first is None
    assert dropped is not None and retried == dropped


def test_a_key_the_caller_gives_is_sent_as_is(server):
    with BlockingHTTPClient(server.sock) as con:
        a = con.add("Noop", {"y": 1}, idempotency_key="mine-1")
        b = con.add("Noop", {"y": 1}, idempotency_key="mine-1")
        assert a["_id"] == b["_id"]
        with pytest.raises(PartyHTTPError) as refused:
            con.add("Noop", {"y": 2}, idempotency_key="mine-1")
        assert refused.value.status == 422


def test_the_cli_sends_its_key(server, capsys):
    from party.cli import main

    args = ["add", "Noop", "--socket", server.sock, "--json", "--idempotency-key", "cli-1"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first


def test_expired_key_constant_is_a_day():
    assert KEY_TTL == timedelta(hours=24)
    assert Status.QUEUED  # keep the import honest


def test_the_in_process_handle_takes_a_key(tmp_path):
    import party

    with party.open(store=f"sqlite:///{tmp_path / 'p.db'}") as handle:
        items = [{"party": "SampleTask", "data": {"arg1": 1}}]
        first = handle.add_many(items, idempotency_key="local-1")
        assert handle.add_many(items, idempotency_key="local-1") == first
        assert handle.add("SampleTask", {"arg1": 1}, idempotency_key="local-2")["_id"] not in {
            t["_id"] for t in first
        }
        with pytest.raises(KeyMismatch):
            handle.add("SampleTask", {"arg1": 2}, idempotency_key="local-1")
        with pytest.raises(ValidationError, match="malformed Idempotency-Key"):
            handle.add("SampleTask", idempotency_key="no spaces please")
        assert first[0]["created"].tzinfo is None  # times come back as datetimes, as without
