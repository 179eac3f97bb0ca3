"""``POST /tasks`` has two paths: ``AddTasks`` below the ``RequestHandler`` for the ordinary
request, ``TasksHandler`` for the rest. Both answer alike; the fast one keeps every rule."""

import http.client
import json
import logging
import time
from email.utils import parsedate_to_datetime

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from party.config import Settings
from party.errors import StoreUnavailable
from party.queue import TaskQueue
from party.registry import discover
from party.server.adding import AddTasks
from party.server.app import make_app
from party.stores.sqlite import SqliteStore
from tests.serving import HANDLERS, ServerThread

ITEM = {"party": "Noop", "data": {"k": 1}}


@pytest.fixture
def server(tmp_path):
    server = ServerThread(tmp_path / "p.db", tmp_path / "p.sock", token="tok").start()
    yield server
    server.stop()


@pytest.fixture
def conn(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    yield conn
    conn.close()


def post(conn, body, headers=None, chunked=False):
    headers = {"Authorization": "Bearer tok", **(headers or {})}
    if chunked:
        conn.request("POST", "/tasks", body=iter([body]), headers=headers, encode_chunked=True)
    else:
        conn.request("POST", "/tasks", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), json.loads(response.read())


def wait_for_line(caplog, start):
    """The server thread logs a request just after answering it: wait for the line."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.getMessage().startswith(start):
                return record.getMessage()
        time.sleep(0.01)
    raise AssertionError(f"no log line starting {start!r}")


@pytest.mark.parametrize(
    "method, headers, fast",
    [
        ("POST", {"Content-Length": "40", "Authorization": "Bearer tok"}, True),
        ("POST", {"Content-Length": "1024", "Authorization": "Bearer tok"}, True),
        ("POST", {"Content-Length": "1025", "Authorization": "Bearer tok"}, False),  # 413
        ("POST", {"Content-Length": "40", "Authorization": "Bearer tik"}, False),  # 401
        ("POST", {"Content-Length": "40"}, False),  # 401
        ("POST", {"Transfer-Encoding": "chunked", "Authorization": "Bearer tok"}, False),
        ("GET", {"Authorization": "Bearer tok"}, False),
    ],
)
def test_only_the_ordinary_post_takes_the_fast_path(tmp_path, method, headers, fast):
    queue = TaskQueue(SqliteStore(tmp_path / "p.db"), discover([str(HANDLERS)]))
    app = make_app(queue, queue.registry, Settings(token="tok", max_body=1024), None)
    start = RequestStartLine(method, "/tasks", "HTTP/1.1")
    request = HTTPServerRequest(start_line=start, headers=HTTPHeaders(Host="x", **headers))
    assert isinstance(app.find_handler(request), AddTasks) is fast
    queue.store.close()


def test_a_chunked_body_takes_the_handler_path_and_gets_the_same_answer(server, conn):
    body = json.dumps({"tasks": [ITEM]}).encode()
    fast = post(conn, body)
    slow = post(conn, body, chunked=True)
    assert fast[0] == slow[0] == 201
    for _, _, answer in (fast, slow):
        assert [(t["party"], t["data"], t["status"]) for t in answer] == [
            ("Noop", {"k": 1}, "queued")
        ]
    for name in ("Content-Type", "Server"):
        assert fast[1][name] == slow[1][name]
    # The same format; the two answers may straddle a second boundary.
    dates = [parsedate_to_datetime(answer[1]["Date"]) for answer in (fast, slow)]
    assert abs((dates[1] - dates[0]).total_seconds()) <= 2
    assert fast[1]["Content-Type"] == "application/json; charset=UTF-8"
    assert int(fast[1]["Content-Length"]) == len(json.dumps(fast[2], separators=(",", ":")))
    assert len(server.queue.list()) == 2


def test_errors_and_successes_alternate_on_one_kept_alive_connection(server, conn):
    assert post(conn, b'{"tasks": [{"party": "Nope"}]}')[0] == 400
    assert post(conn, json.dumps({"tasks": [ITEM]}).encode())[0] == 201
    status, _, answer = post(conn, b"{")
    assert status == 400 and "not valid JSON" in answer["error"]
    assert post(conn, json.dumps({"tasks": [ITEM, ITEM]}).encode())[0] == 201
    assert len(server.queue.list()) == 3


def test_a_wrong_token_is_refused_and_writes_nothing(server, conn):
    status, _, answer = post(conn, json.dumps({"tasks": [ITEM]}).encode(), {"Authorization": "x"})
    assert status == 401 and "wrong token" in answer["error"]
    assert server.queue.list() == []


def test_a_store_failure_answers_503_and_is_logged(server, conn, monkeypatch, caplog):
    def unavailable(tasks):
        raise StoreUnavailable("disk on fire")

    monkeypatch.setattr(server.queue.store, "insert_many", unavailable)
    with caplog.at_level(logging.INFO, logger="party.server"):
        status, _, answer = post(conn, json.dumps({"tasks": [ITEM]}).encode())
        access = wait_for_line(caplog, "503 POST /tasks ")
    assert status == 503 and answer == {"error": "the store is unavailable: disk on fire"}
    assert access.endswith("ms the store is unavailable: disk on fire")
    logged = [r.getMessage() for r in caplog.records]
    assert "store unavailable during POST /tasks (127.0.0.1): disk on fire" in logged


@pytest.mark.off_contract
def test_a_bug_answers_500_and_logs_its_traceback(server, conn, monkeypatch, caplog):
    def broken(tasks):
        raise RuntimeError("oops")

    monkeypatch.setattr(server.queue.store, "insert_many", broken)
    with caplog.at_level(logging.INFO, logger="party.server"):
        status, _, answer = post(conn, json.dumps({"tasks": [ITEM]}).encode())
        wait_for_line(caplog, "500 POST /tasks ")
    assert status == 500 and "internal server error (RuntimeError: oops)" in answer["error"]
    bug = [r for r in caplog.records if r.getMessage().startswith("bug while serving POST /tasks")]
    assert len(bug) == 1 and bug[0].exc_info is not None
