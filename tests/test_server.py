"""The HTTP server as users run it: a real ``python -m party serve`` process, over TCP and a Unix
socket, on a temporary SQLite store, driven through ``party.client``."""

import datetime
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_for

from party import TaskBase
from party.client import BlockingHTTPClient, PartyHTTPError, UnixHTTPConnection
from party.model import Status
from party.queue import TaskQueue
from party.registry import Registry
from party.stores.sqlite import SqliteStore
from tests.serving import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.processes

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def tcp_server(workdir):
    server = ServerProcess(workdir / "tcp.db").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def unix_server(workdir):
    server = ServerProcess(workdir / "unix.db", sock=workdir / "party.sock").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(params=["tcp", "unix"])
def server(request):
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def con(server):
    with server.client() as client:
        yield client


def raw(server, method, path, body=b"", headers=None):
    """One request with an exact body; returns (status, decoded JSON)."""
    if server.sock:
        conn = UnixHTTPConnection(server.sock, timeout=30)
    else:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def total(con):
    return sum(con("/stats")["statuses"].values())


# -- the seeds' examples -------------------------------------------------------------------------


def test_seed_example_adds_a_task_with_a_datetime(con):
    data = {
        "tasks": [
            {
                "party": "SampleTask",
                "data": {"arg1": "val1"},
                "timestamp": datetime.datetime(2014, 3, 11, 5, 12, 22, 86400),
            },
        ]
    }
    (task,) = con("/tasks", None, data=data, method="POST")
    assert task["party"] == "SampleTask" and task["data"] == {"arg1": "val1"}
    assert task["timestamp"] == datetime.datetime(2014, 3, 11, 5, 12, 22, 86400)
    assert task["status"] == "queued" and task["attempts"] == 0
    assert isinstance(task["created"], datetime.datetime) and task["created"].tzinfo is None


def test_seed_example_batch_comes_back_in_request_order(con):
    when = datetime.datetime(2014, 3, 11, 5, 12, 22, 86400)
    data = {
        "tasks": [
            {"party": "SampleTask", "data": {"arg1": "val1"}, "timestamp": when},
            {"party": "Noop", "data": {"arg1": "val1"}},  # Do not provide timestamp.
            {"party": "Noop", "data": {"arg1": "val1"}, "timestamp": when},  # With timestamp
        ]
    }
    tasks = con("/tasks", None, data=data, method="POST")
    assert [t["party"] for t in tasks] == ["SampleTask", "Noop", "Noop"]
    assert tasks[0]["timestamp"] == tasks[2]["timestamp"] == when
    assert tasks[1]["timestamp"] == tasks[1]["created"]  # no timestamp: due now
    assert con(f"/task/{tasks[1]['_id']}")["_id"] == tasks[1]["_id"]


def test_seed_force_run_without_a_body_and_with_an_empty_object(con):
    first, second = con.add_many([{"party": "Noop", "data": {"return": 1}}, {"party": "Noop"}])
    done = con(f"/task/{first['_id']}", None, method="POST")
    assert done["status"] == "completed" and done["attempts"] == 1 and done["result"] == 1
    assert done["started_on"] <= done["completed_on"]
    done = con(f"/task/{second['_id']}", None, method="POST", data={})
    assert done["status"] == "completed"


# -- timestamps ----------------------------------------------------------------------------------

IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
EXPECTED = datetime.datetime(2030, 5, 1, 6, 30, 0, 250000)


@pytest.mark.parametrize(
    "sent",
    [
        EXPECTED,  # naive: taken as UTC
        EXPECTED.replace(tzinfo=datetime.UTC),
        datetime.datetime(2030, 5, 1, 12, 0, 0, 250000, tzinfo=IST),
        "2030-05-01T06:30:00.250000",
        "2030-05-01T06:30:00.250Z",
        "2030-05-01T12:00:00.25+05:30",
        "2030-05-01T02:30:00.25-04:00",
        1903847400.25,  # epoch seconds
        {"$date": "2030-05-01T06:30:00.250Z"},
        {"$date": 1903847400250},
    ],
)
def test_timestamps_with_and_without_offsets_round_trip_as_utc(con, sent):
    (task,) = con("/tasks", None, data={"tasks": [{"party": "Noop", "timestamp": sent}]},
                  method="POST")  # fmt: skip
    assert task["timestamp"] == EXPECTED
    assert con.get(task["_id"])["timestamp"] == EXPECTED
    raw_task = con.request(f"/task/{task['_id']}")
    assert raw_task["timestamp"] == "2030-05-01T06:30:00.250000Z"


# -- every endpoint and status code --------------------------------------------------------------


def test_health_is_ok(con):
    assert con("/health") == {"status": "ok"}


def test_get_task(con):
    task = con.add("Noop", {"k": "get"})
    assert con(f"/task/{task['_id']}") == task


@pytest.mark.parametrize(
    "method, path, status, words",
    [
        ("GET", "/task/123", 400, "malformed task id '123': expected 24 lowercase hex"),
        ("GET", "/task/0123456789abcdef0123456Z", 400, "malformed task id"),
        ("GET", "/task/", 400, "malformed task id ''"),
        ("DELETE", "/task/xyz", 400, "malformed task id"),
        ("POST", "/task/xyz", 400, "malformed task id"),
        # A final newline passed a `$`-anchored pattern: 404 on SQLite, 500 on MongoDB.
        ("GET", "/task/ffffffffffffffffffffffff%0a", 400, "malformed task id"),
        ("DELETE", "/task/ffffffffffffffffffffffff%0A", 400, "malformed task id"),
        ("GET", "/tasks?after=1.0.1.ffffffffffffffffffffffff%0a", 400, "malformed 'after' cursor"),
        ("GET", "/task/ffffffffffffffffffffffff", 404, "no task with id ffffffffffffffffffffffff"),
        ("DELETE", "/task/ffffffffffffffffffffffff", 404, "no task with id"),
        ("POST", "/task/ffffffffffffffffffffffff", 404, "no task with id"),
        ("GET", "/nowhere", 404, "no endpoint /nowhere; the endpoints are POST /tasks"),
        ("DELETE", "/stats", 405, "DELETE is not allowed on /stats; allowed: GET"),
        ("PUT", "/tasks", 405, "allowed: GET, POST"),
    ],
)
def test_bad_ids_and_paths_are_answered_with_json_errors(con, method, path, status, words):
    with pytest.raises(PartyHTTPError) as info:
        con(path, None, method=method)
    assert info.value.status == status
    assert words in info.value.message


def test_delete_is_idempotent_and_refuses_a_completed_task(con):
    task = con.add("Noop")
    assert con(f"/task/{task['_id']}", None, method="DELETE")["status"] == "deleted"
    assert con.delete(task["_id"])["status"] == "deleted"
    done = con.run(con.add("Noop")["_id"])
    with pytest.raises(PartyHTTPError, match="HTTP 409: .*completed task cannot be deleted"):
        con.delete(done["_id"])


def test_force_run_refuses_completed_deleted_and_failed_tasks(con):
    done = con.run(con.add("Noop")["_id"])
    with pytest.raises(PartyHTTPError, match="409: .*is completed: a completed task cannot be run"):
        con.run(done["_id"])
    deleted = con.delete(con.add("Noop")["_id"])
    with pytest.raises(PartyHTTPError, match="409: .*is deleted: a deleted task cannot be run"):
        con.run(deleted["_id"])
    boom = con.add("Boom")
    for attempt in range(1, 7):
        after = con.run(boom["_id"])
        assert after["attempts"] == attempt
        assert after["last_error"]["type"] == "RuntimeError"
        assert after["last_error"]["message"] == f"boom on attempt {attempt}"
    assert after["status"] == "failed"
    with pytest.raises(PartyHTTPError, match="409: .*is failed: it failed 6 attempts"):
        con.run(boom["_id"])


def test_force_run_refuses_a_task_whose_handler_this_server_lacks_and_leaves_it_queued(server):
    class OnlyOnTheScheduler(TaskBase):  # e.g. a module a rolling deploy has not given the server
        def run(self):
            return "ran"

    queue = TaskQueue(
        SqliteStore(server.store), Registry({"OnlyOnTheScheduler": OnlyOnTheScheduler})
    )
    try:
        (task,) = queue.add([{"party": "OnlyOnTheScheduler"}])
        status, answer = raw(server, "POST", f"/task/{task.id}")
        assert status == 409
        assert (
            "no handler named 'OnlyOnTheScheduler' is registered in this server" in answer["error"]
        )
        stored = queue.get(task.id)
        assert (stored.status, stored.attempts, stored.lease) == (Status.QUEUED, 0, None)
    finally:
        queue.store.close()


def test_force_run_answers_a_failed_attempt_with_its_error(con):
    after = con.run(con.add("FlakyTwice")["_id"])
    assert after["status"] == "queued" and after["attempts"] == 1
    assert after["last_error"]["message"] == "flaky attempt 1" and after["last_error"]["traceback"]


def test_force_run_refuses_a_running_task_and_keeps_serving_meanwhile(server):
    with server.client() as con:
        task = con.add("Doze", {"seconds": 4.0})  # long enough for a loaded machine's requests
        other = con.add("Noop", {"during": "force-run"})
    outcome = {}

    def force_run():
        with server.client() as runner:
            outcome["task"] = runner.run(task["_id"])
            outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=force_run)
    thread.start()
    with server.client() as con:
        wait_for(lambda: con.get(task["_id"])["status"] == "running", 10, "the force-run")
        with pytest.raises(PartyHTTPError, match="409: .*is running: it is running now"):
            con.run(task["_id"])
        for _ in range(3):  # other requests keep being served while the run takes its seconds
            assert con.health() == {"status": "ok"}
            assert con.get(other["_id"])["status"] == "queued"
            con.stats()
            con.add("Noop")
        served = time.monotonic()
        still_running = thread.is_alive()
    thread.join(30)
    assert still_running and served < outcome["ended"]
    done = outcome["task"]
    assert done["status"] == "completed" and done["result"] == {"slept": 4.0, "attempt": 1}


def test_list_pages_through_in_queue_order(con):
    base = datetime.datetime(2031, 1, 1)
    added = con.add_many(
        [{"party": "Spawner", "timestamp": base + datetime.timedelta(minutes=m)} for m in (3, 1, 2)]
        + [{"party": "Spawner", "timestamp": base}]
    )
    seen = []
    after = None
    while True:
        page = con.list(party="Spawner", status="queued", limit=3, after=after)
        seen.extend(page["tasks"])
        after = page["next"]
        if after is None:
            break
    mine = {t["_id"] for t in added}
    assert [t["_id"] for t in seen if t["_id"] in mine] == [added[i]["_id"] for i in (3, 1, 2, 0)]
    assert len({t["_id"] for t in seen}) == len(seen)
    assert [t["_id"] for t in con.iter_tasks(party="Spawner", page=1)] == [t["_id"] for t in seen]
    assert con.list(party="Spawner", limit=1000)["next"] is None


@pytest.mark.parametrize(
    "params, words",
    [
        ({"status": "done"}, "unknown status 'done'; expected one of queued, running"),
        ({"limit": "0"}, "limit must be an integer 1..1000"),
        ({"after": "garbage"}, "malformed 'after' cursor"),
        ({"sort": "x"}, "unknown query parameter(s) 'sort'; GET /tasks accepts status"),
    ],
)
def test_list_refuses_bad_filters(con, params, words):
    with pytest.raises(PartyHTTPError) as info:
        con("/tasks", params)
    assert info.value.status == 400 and words in info.value.message


def test_stats_has_the_contract_shape(con):
    con.add("Noop", {"stats": 1}, timestamp=datetime.datetime(2000, 1, 1))
    stats = con("/stats")
    assert set(stats["statuses"]) == {"queued", "running", "completed", "failed", "deleted"}
    assert stats["parties"]["Noop"]["queued"] >= 1
    assert stats["due"] >= 1 and stats["oldest_due_seconds"] > 0


def test_recurring_singleton_conflicts_answer_409(con):
    with pytest.raises(PartyHTTPError) as info:
        con.add_many([{"party": "Every5", "data": {"s": 1}}, {"party": "Every5", "data": {"s": 1}}])
    assert info.value.status == 409 and info.value.index == 1
    assert "only one may exist at a time" in info.value.message
    con.add("Every5", {"s": 1, "t": 2})
    with pytest.raises(PartyHTTPError, match="409"):
        con.add("Every5", {"t": 2, "s": 1})  # the same data, keys in another order


# -- malformed requests: the right 4xx, a helpful message, nothing written ------------------------

BATCH_10K = {"tasks": [{"party": "Noop"}] * 10_000}
GOOD = {"party": "Noop", "data": {"ok": True}}


@pytest.mark.parametrize(
    "body, status, index, words",
    [
        (b"this is not json", 400, None, "the request body is not valid JSON"),
        (b"", 400, None, "got an empty body"),
        (b"[]", 400, None, "got a JSON array"),
        ({"task": [GOOD]}, 400, None, 'the body has no "tasks" field'),
        ({"tasks": [GOOD], "priority": 1}, 400, None, "unknown field(s) 'priority'"),
        ({"tasks": "Noop"}, 400, None, '"tasks" must be a JSON array'),
        ({"tasks": [GOOD, "Noop"]}, 400, 1, "item 1: expected a task object"),
        ({"tasks": [GOOD, {"data": {}}]}, 400, 1, "item 1: 'party' is missing"),
        ({"tasks": [GOOD, {"party": 5}]}, 400, 1, "'party' must be the name of a handler"),
        ({"tasks": [GOOD, {"party": "Nope"}]}, 400, 1, "unknown handler 'Nope'; known handlers: "),
        ({"tasks": [GOOD, {"party": "Noop", "data": [1]}]}, 400, 1, "'data' must be a JSON object"),
        ({"tasks": [GOOD, {"party": "Noop", "data": {"$set": 1}}]}, 400, 1, "'$set' is not acc"),
        ({"tasks": [{"party": "Noop", "data": {"a": [{"$x": 1}]}}]}, 400, 0, "'$x'"),
        ({"tasks": [GOOD, {"party": "Noop", "timestamp": "soon"}]}, 400, 1, "bad 'timestamp'"),
        ({"tasks": [{"party": "Noop", "timestamp": True}]}, 400, 0, "expected an ISO 8601"),
        ({"tasks": [{"party": "Noop", "timestamp": -1}]}, 400, 0, "outside 1970-01-01"),
        ({"tasks": [GOOD, {"party": "Noop", "when": 1}]}, 400, 1, "unknown field(s) 'when'"),
        (BATCH_10K, 400, None, "10000 tasks in one request is over the limit of 5000"),
        (b"[" + b" " * (9 << 20) + b"]", 413, None, "over the limit of 8388608 bytes"),
    ],
)
def test_malformed_post_is_refused_and_writes_nothing(server, body, status, index, words):
    with server.client() as con:
        before = total(con)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, answer = raw(server, "POST", "/tasks", payload)
        assert (got, answer.get("index")) == (status, index), answer
        assert words in answer["error"]
        assert set(answer) <= {"error", "index"}
        assert total(con) == before


def test_unknown_handler_lists_the_known_ones(con):
    with pytest.raises(PartyHTTPError) as info:
        con.add("os.system", {"cmd": "true"})
    assert "Noop" in info.value.message and "SampleTask" in info.value.message


def test_force_run_body_must_be_empty_or_an_empty_object(server):
    with server.client() as con:
        task = con.add("Noop")
    status, answer = raw(server, "POST", f"/task/{task['_id']}", b'{"now": 1}')
    assert status == 400 and "takes an empty body or {}" in answer["error"]
    status, answer = raw(server, "POST", f"/task/{task['_id']}", b"not json")
    assert status == 400 and "not valid JSON" in answer["error"]


# -- the token -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("token") / "party.db"
    server = ServerProcess(store, env={"PARTY_TOKEN": TOKEN}).start(token=TOKEN)
    yield server
    assert server.stop() == 0, server.log()


def test_health_needs_no_token(token_server):
    status, answer = raw(token_server, "GET", "/health")
    assert (status, answer) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "headers, words",
    [
        ({}, "this server requires a token: send 'Authorization: Bearer <token>'"),
        ({"Authorization": "Bearer wrong"}, "wrong token"),
        ({"Authorization": TOKEN}, "wrong token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong token"),
    ],
)
def test_requests_without_the_right_token_get_401(token_server, headers, words):
    with token_server.client(token=TOKEN) as con:
        before = total(con)
    for method, path, body in [
        ("GET", "/stats", b""),
        ("GET", "/tasks", b""),
        ("GET", "/task/ffffffffffffffffffffffff", b""),
        ("POST", "/tasks", json.dumps({"tasks": [GOOD]}).encode()),
        ("GET", "/nowhere", b""),
    ]:
        status, answer = raw(token_server, method, path, body, headers)
        assert status == 401 and words in answer["error"], (method, path)
    with token_server.client(token=TOKEN) as con:
        assert total(con) == before


@pytest.mark.parametrize("method", ["FOO", "TRACE", "M" * 300, "PUT"])
def test_a_method_the_endpoint_lacks_still_needs_the_token_first(token_server, method):
    status, answer = raw(token_server, method, "/tasks")
    assert status == 401 and "requires a token" in answer["error"]
    status, answer = raw(
        token_server, method, "/tasks", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 405 and "allowed: GET, POST" in answer["error"]
    assert len(answer["error"]) < 100  # a made-up method is not echoed whole


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_matched_in_any_case(token_server, scheme):
    status, _ = raw(token_server, "GET", "/stats", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert status == 200
    status, _ = raw(token_server, "GET", "/stats", headers={"Authorization": f"{scheme} wrong"})
    assert status == 401


def test_a_401_names_the_bearer_scheme_in_www_authenticate(token_server):
    for method, path, body in [
        ("GET", "/stats", b""),
        ("POST", "/tasks", json.dumps({"tasks": [GOOD]}).encode()),
    ]:
        conn = http.client.HTTPConnection(token_server.host, token_server.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Authorization": "Bearer wrong"})
            response = conn.getresponse()
            response.read()
            assert response.status == 401, (method, path)
            assert response.getheader("WWW-Authenticate") == 'Bearer realm="party"', (method, path)
        finally:
            conn.close()


def test_the_right_token_is_let_in(token_server):
    with token_server.client(token=TOKEN) as con:
        task = con.add("Noop")
        assert con.run(task["_id"])["status"] == "completed"
    with token_server.client() as con, pytest.raises(PartyHTTPError, match="401"):
        con.stats()


# -- listening: addresses, sockets, signals -------------------------------------------------------


def run_serve(tmp_path, *args, env=None, timeout=15):
    command = [sys.executable, "-m", "party", "serve", "--store", f"sqlite:///{tmp_path}/p.db",
               *args]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    return subprocess.run(
        command, cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_non_loopback_host_without_token_is_refused(tmp_path):
    result = run_serve(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr and "without a token" in result.stderr
    assert "PARTY_TOKEN" in result.stderr and "--insecure" in result.stderr


@pytest.mark.parametrize("extra", [["--insecure"], ["--token", TOKEN]])
def test_non_loopback_host_is_allowed_with_a_token_or_insecure(tmp_path, extra):
    server = ServerProcess(tmp_path / "p.db", host="0.0.0.0", args=extra)
    server.host = "127.0.0.1"  # reach it through loopback
    server.start(token=TOKEN if "--token" in extra else None)
    assert server.stop() == 0


def test_unix_socket_has_mode_0660(unix_server):
    assert stat.S_IMODE(os.stat(unix_server.sock).st_mode) == 0o660


def test_live_socket_is_not_stolen(unix_server, tmp_path):
    result = run_serve(tmp_path, "--socket", unix_server.sock)
    assert result.returncode == 2
    assert "another server is already listening on" in result.stderr
    with unix_server.client() as con:
        assert con.health() == {"status": "ok"}


def test_stale_socket_is_replaced_and_removed_on_stop(tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, as after a crash
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = ServerProcess(tmp_path / "p.db", sock=path).start()
    with server.client() as con:
        assert con.health() == {"status": "ok"}
    assert server.stop(signal.SIGINT) == 0
    assert not path.exists()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    result = run_serve(tmp_path, "--socket", str(path))
    assert result.returncode == 2 and "exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me"


def test_request_log_has_one_line_per_request(tcp_server):
    marker = "ffffffffffffffffffffff01"
    with tcp_server.client() as con:
        with pytest.raises(PartyHTTPError):
            con.get(marker)
    deadline = time.monotonic() + 5
    while marker not in tcp_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in tcp_server.log().splitlines() if marker in line]
    assert len(lines) == 1 and f"404 GET /task/{marker}" in lines[0]
    assert "no task with id" in lines[0]


def test_client_over_a_killed_server_says_so(tmp_path):
    server = ServerProcess(tmp_path / "p.db").start()
    con = server.client(timeout=5)
    assert con.health() == {"status": "ok"}
    server.stop()
    with pytest.raises(Exception, match="cannot reach|broke"):
        con.health()
    assert isinstance(con, BlockingHTTPClient)


def force_run_in_thread(server, task_id):
    outcome = {}

    def run():
        with server.client() as con:
            try:
                outcome["task"] = con.run(task_id)
            except PartyHTTPError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    with server.client() as con:
        deadline = time.monotonic() + 10
        while con.get(task_id)["status"] != "running":
            assert not outcome, f"the force-run answered before it was seen running: {outcome}"
            assert time.monotonic() < deadline, "the force-run never started running"
            time.sleep(0.01)
    return thread, outcome


def test_sigterm_lets_a_force_run_finish_then_exits(tmp_path):
    server = ServerProcess(tmp_path / "p.db").start()
    with server.client() as con:
        task = con.add("Doze", {"seconds": 1.0})
    thread, outcome = force_run_in_thread(server, task["_id"])
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert "task" in outcome, f"the force-run was not answered with its task: {outcome}"
    assert outcome["task"]["status"] == "completed"
    assert server.stop() == 0


def test_a_stopping_server_waits_for_a_force_run_still_claiming_its_task(tmp_path):
    # A force-run claims its task before the service has it: a server told to stop while the
    # claim is under way waits for that request too (it answered 503 and left its task running
    # under a lease when only the runs the service had were waited for).
    import asyncio

    from tests.serving import ServerThread

    server = ServerThread(tmp_path / "p.db", tmp_path / "p.sock").start()
    address = f"http://127.0.0.1:{server.port}"
    try:
        (task,) = server.queue.add([{"party": "Noop"}])
        claiming, release = threading.Event(), threading.Event()
        claim_now = server.queue.claim_now

        def slow_claim(task_id):
            claiming.set()
            release.wait(10)
            return claim_now(task_id)

        server.queue.claim_now = slow_claim
        answers = {}

        def force_run():
            with BlockingHTTPClient(address) as con:
                answers["first"] = con.run(task.id)

        thread = threading.Thread(target=force_run)
        thread.start()
        assert claiming.wait(10)
        drained = asyncio.run_coroutine_threadsafe(
            server.force_runs.drain(10.0, asyncio.Event()), server.loop
        )
        time.sleep(0.2)
        assert not drained.done()  # the request in its claim holds the stop back
        with BlockingHTTPClient(address) as con, pytest.raises(PartyHTTPError) as refused:
            con.run(task.id)  # a force-run asked while stopping starts nothing
        assert refused.value.status == 503 and "stopping" in str(refused.value)
        release.set()
        thread.join(10)
        drained.result(10)
        assert answers["first"]["status"] == "completed"
    finally:
        release.set()
        server.stop()


def test_a_second_signal_interrupts_a_force_run_with_503(tmp_path):
    server = ServerProcess(tmp_path / "p.db").start()
    with server.client() as con:
        task = con.add("Doze", {"seconds": 30})
    thread, outcome = force_run_in_thread(server, task["_id"])
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGINT)
    thread.join(30)
    assert outcome["error"].status == 503 and "server is stopping" in outcome["error"].message
    assert server.stop() == 0
    from party.stores.sqlite import SqliteStore

    with SqliteStore(tmp_path / "p.db") as store:
        after = store.get(task["_id"])
    assert (after.status, after.attempts) == ("queued", 0)  # handed back, attempt given back
