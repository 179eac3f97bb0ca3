"""``party.client.BlockingHTTPClient`` against the app served in a thread (Unix socket and TCP)."""

import datetime
import json
import subprocess
import sys

import pytest

from party.client import (
    BlockingHTTPClient,
    PartyConnectionError,
    PartyHTTPError,
    UnixHTTPConnection,
)
from tests.serving import ROOT, ServerThread, free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    where = tmp_path_factory.mktemp("client")
    server = ServerThread(where / "party.db", where / "party.sock").start()
    yield server
    server.stop()


@pytest.fixture(params=["unix", "tcp", "url"])
def con(request, served):
    address = {
        "unix": served.sock,
        "tcp": f"127.0.0.1:{served.port}",
        "url": f"http://127.0.0.1:{served.port}",
    }[request.param]
    with BlockingHTTPClient(address) as client:
        yield client


def test_address_forms_pick_the_transport():
    assert isinstance(BlockingHTTPClient("/tmp/party.sock")._connect(), UnixHTTPConnection)
    assert isinstance(BlockingHTTPClient("unix:/tmp/p.sock")._connect(), UnixHTTPConnection)
    conn = BlockingHTTPClient("127.0.0.1:9000")._connect()
    assert (conn.host, conn.port) == ("127.0.0.1", 9000)
    conn = BlockingHTTPClient("localhost")._connect()
    assert (conn.host, conn.port) == ("localhost", 8032)
    conn = BlockingHTTPClient("http://[::1]:9001")._connect()
    assert (conn.host, conn.port) == ("::1", 9001)


def test_the_connection_is_kept_alive_between_calls(con):
    con.health()
    sock = con._conn.sock
    con.stats()
    con.add("Noop")
    assert con._conn.sock is sock


def test_a_connection_closed_by_the_server_is_reopened(served, con):
    con.health()
    first = con._conn.sock
    served.close_connections()
    assert con.add("Noop")["status"] == "queued"
    assert con._conn.sock is not first


def test_datetimes_are_sent_as_iso_and_come_back_naive_utc(con):
    ist = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    sent = datetime.datetime(2030, 1, 1, 17, 30, tzinfo=ist)
    task = con.add("Noop", {"when": "x"}, timestamp=sent)
    assert task["timestamp"] == datetime.datetime(2030, 1, 1, 12, 0)
    for name in ("timestamp", "created"):
        assert isinstance(task[name], datetime.datetime) and task[name].tzinfo is None
    assert task["last_run_on"] is None
    raw = con.request(f"/task/{task['_id']}")
    assert raw["timestamp"] == "2030-01-01T12:00:00.000000Z"


def test_data_holding_a_datetime_is_sent_as_an_iso_string(con):
    task = con.add("Noop", {"at": datetime.datetime(2030, 1, 1, 12, 0)})
    assert task["data"] == {"at": "2030-01-01T12:00:00"}


def test_http_errors_carry_status_message_and_index(con):
    with pytest.raises(PartyHTTPError) as info:
        con.add_many([{"party": "Noop"}, {"party": "Nope"}])
    error = info.value
    assert error.status == 400 and error.index == 1
    assert error.message.startswith("item 1: unknown handler 'Nope'")
    assert error.body == {"error": error.message, "index": 1}
    assert str(error).startswith("HTTP 400: item 1:")
    with pytest.raises(PartyHTTPError) as info:
        con.get("ffffffffffffffffffffffff")
    assert info.value.status == 404 and info.value.index is None


def test_the_helpers_cover_the_common_calls(con):
    task = con.add("Noop", {"return": [1, 2]})
    assert con.get(task["_id"]) == task
    done = con.run(task["_id"])
    assert done["status"] == "completed" and done["result"] == [1, 2]
    assert isinstance(done["started_on"], datetime.datetime)
    doomed = con.add("Noop")
    assert con.delete(doomed["_id"])["status"] == "deleted"
    page = con.list(status="deleted", limit=1000)
    assert doomed["_id"] in [t["_id"] for t in page["tasks"]]
    assert isinstance(page["tasks"][0]["created"], datetime.datetime)
    ids = [t["_id"] for t in con.iter_tasks(page=2)]
    assert task["_id"] in ids and len(ids) == len(set(ids))
    assert con.stats()["statuses"]["completed"] >= 1
    assert con.health() == {"status": "ok"}


def test_seed_call_style_force_run_with_and_without_data(con):
    a, b = con.add_many([{"party": "Noop"}, {"party": "Noop"}])
    assert con(f"/task/{a['_id']}", None, method="POST")["status"] == "completed"
    assert con(f"/task/{b['_id']}", None, method="POST", data={})["status"] == "completed"


def test_batch_limit_is_named(con):
    with pytest.raises(PartyHTTPError, match="101 tasks in one request is over the limit of 100"):
        con.add_many([{"party": "Noop"}] * 101)


def test_oversized_body_is_answered_413_not_a_broken_pipe(con):
    with pytest.raises(PartyHTTPError) as info:
        con.add("Noop", {"blob": "x" * (2 << 20)})
    assert info.value.status == 413 and "over the limit of 1048576 bytes" in info.value.message
    assert con.health() == {"status": "ok"}  # and the client carries on


def test_unreachable_server_raises_a_connection_error(tmp_path):
    with pytest.raises(PartyConnectionError, match="cannot reach the Party server"):
        BlockingHTTPClient(str(tmp_path / "none.sock")).health()
    with pytest.raises(PartyConnectionError, match="cannot reach"):
        BlockingHTTPClient(f"127.0.0.1:{free_port()}").health()


def test_token_is_sent_as_a_bearer_header(tmp_path):
    server = ServerThread(tmp_path / "t.db", tmp_path / "t.sock", token="tok").start()
    try:
        with BlockingHTTPClient(server.sock, token="tok") as con:
            assert con.stats()["due"] == 0
        with BlockingHTTPClient(server.sock, token="bad") as con:
            with pytest.raises(PartyHTTPError, match="401: wrong token"):
                con.stats()
            assert con.health() == {"status": "ok"}
    finally:
        server.stop()


@pytest.mark.processes
def test_importing_the_client_loads_neither_tornado_nor_pymongo():
    code = (
        "import sys, party.client; "
        "print(json.dumps(sorted(m for m in ('tornado', 'pymongo', 'party.server') "
        "if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_request_with_a_body_goes_out_in_one_write(served, kind):
    address = served.sock if kind == "unix" else f"127.0.0.1:{served.port}"
    with BlockingHTTPClient(address) as client:
        client.health()  # connects
        conn = client._conn
        writes = []
        send = conn.send
        conn.send = lambda data: (writes.append(bytes(data)), send(data))[1]
        task = client.add("Noop", {"n": 1})
        assert task["data"] == {"n": 1}
        assert len(writes) == 1
        head, _, body = writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /tasks HTTP/1.1\r\n") and b"Content-Length: " in head
        assert json.loads(body) == {"tasks": [{"party": "Noop", "data": {"n": 1}}]}
        client.health()  # the connection is still in step
