"""The dashboard without a browser: the session rule, its cookie, CSRF on actions, and the
loopback rules of a server without a token (the browser tests: test_dashboard_browser.py)."""

import http.client
import re
import socket

import pytest

from tests.serving import ServerThread


@pytest.fixture
def served(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token="tok").start()
    yield server
    server.stop()


@pytest.fixture
def open_server(tmp_path):
    server = ServerThread(tmp_path / "open.db", tmp_path / "open.sock").start()
    yield server
    server.stop()


def ask(server, method, path, body=None, headers=None):
    con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        con.request(method, path, body=body, headers=headers or {})
        answer = con.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode()
    finally:
        con.close()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_without_a_session_the_dashboard_sends_to_the_login_form(served):
    status, headers, _ = ask(served, "GET", "/ui")
    assert status == 303 and headers["Location"] == "/ui/login"
    status, _, page = ask(served, "GET", "/ui/login")
    assert status == 200 and 'name="token"' in page
    # The API's token does not open the dashboard's pages to a script either way.
    assert ask(served, "GET", "/ui/tasks")[0] == 303


def test_the_login_sets_an_httponly_strict_cookie_and_actions_need_the_csrf_token(served):
    (task,) = served.queue.add([{"party": "Noop"}])
    status, _, page = ask(served, "POST", "/ui/login", "token=wrong", FORM)
    assert status == 401 and "wrong token" in page
    status, headers, _ = ask(served, "POST", "/ui/login", "token=tok", FORM)
    assert status == 303 and headers["Location"] == "/ui"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    status, _, page = ask(served, "GET", f"/ui/task/{task.id}", headers=session)
    assert status == 200 and task.id in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]
    run = f"/ui/task/{task.id}/delete"
    assert ask(served, "POST", run, "csrf=nope", {**FORM, **session})[0] == 403
    assert served.queue.get(task.id).status == "queued"
    status, headers, _ = ask(served, "POST", run, f"csrf={csrf}", {**FORM, **session})
    assert status == 303 and served.queue.get(task.id).status == "deleted"


def test_without_a_token_the_dashboard_is_open_on_loopback_only(open_server):
    status, _, page = ask(open_server, "GET", "/ui")
    assert status == 200 and "Overview" in page
    status, _, body = ask(open_server, "GET", "/ui", headers={"Host": "evil.example"})
    assert status == 403 and "loopback" in body
    (task,) = open_server.queue.add([{"party": "Noop"}])
    cross = {**FORM, "Origin": "http://evil.example"}
    assert ask(open_server, "POST", f"/ui/task/{task.id}/delete", "csrf=x", cross)[0] == 403
    assert open_server.queue.get(task.id).status == "queued"


@pytest.mark.parametrize(
    "path", ["/ui/login", "/ui/logout", "/ui/task/ffffffffffffffffffffffff/run"]
)
def test_a_form_over_64_kib_is_refused_before_it_is_read(served, path):
    # The server's limit is the API's (megabytes): a form never needs more than a token.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 50000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"token=" + b"x" * 1000)  # the rest is never sent
        # 400 for its size, or 401 without a session: answered either way before the body came
        assert sock.recv(100).startswith(
            b"HTTP/1.1 401" if "login" not in path else b"HTTP/1.1 400"
        )
    status, _, _ = ask(served, "POST", "/ui/login", "token=tok", FORM)  # a real form still works
    assert status == 303


def test_a_body_that_is_not_a_form_is_answered_400(served):
    multipart = {"Content-Type": "multipart/form-data"}  # no boundary: nothing can be read
    status, _, page = ask(served, "POST", "/ui/login", "token=tok", multipart)
    assert status == 400 and "the form cannot be read" in page
