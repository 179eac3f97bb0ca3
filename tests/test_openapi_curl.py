"""The curl session of docs/http-api.md, run as it stands against a live server: the docs cannot
go stale. Every answer it prints is checked against the OpenAPI document."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.serving import ROOT, ServerProcess, contract

pytestmark = pytest.mark.processes

TOKEN = "curl-session-token"
SESSION = re.compile(r"<!-- curl-session -->\n```sh\n(.*?)\n```", re.S)


def session():
    text = (ROOT / "docs" / "http-api.md").read_text()
    match = SESSION.search(text)
    assert match, "docs/http-api.md has no <!-- curl-session --> block"
    return match.group(1)


@pytest.fixture
def curl():
    path = shutil.which("curl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("curl is missing: .ci/run installs it")
        pytest.skip("curl is not installed (apt-get install curl): the docs' session cannot run")
    return path


def test_the_curl_session_of_the_docs_runs_as_written(curl, tmp_path):
    server = ServerProcess(tmp_path / "party.db", args=["--token", TOKEN]).start(token=TOKEN)
    try:
        env = {**os.environ, "PARTY": f"http://127.0.0.1:{server.port}", "PARTY_TOKEN": TOKEN}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", session()],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        assert server.stop() == 0, server.log()
    assert done.returncode == 0, done.stderr + done.stdout
    added, got, ran, deleted, stats, refused = (
        json.loads(line) for line in done.stdout.split("\n")[:6]
    )
    assert [t["status"] for t in added] == ["queued", "queued"]
    assert got["_id"] == added[0]["_id"] == ran["_id"] and got["status"] == "queued"
    assert ran["status"] == "completed" and ran["attempts"] == 1
    assert deleted["_id"] == added[1]["_id"] and deleted["status"] == "deleted"
    assert stats["statuses"]["completed"] == 1 and stats["statuses"]["deleted"] == 1
    assert "malformed task id" in refused["error"]
    check = contract().violation
    answers = [("POST", "/tasks", 201, added), ("GET", "/task/x", 200, got),
               ("POST", "/task/x", 200, ran), ("DELETE", "/task/x", 200, deleted),
               ("GET", "/stats", 200, stats), ("GET", "/task/x", 400, refused)]  # fmt: skip
    for method, path, status, body in answers:
        assert check(method, path, status, "application/json", json.dumps(body)) is None
