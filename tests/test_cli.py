"""The ``party`` command line: client commands against a served app, and ``up`` as a process."""

import json
import os
import subprocess
import sys

import pytest

from party import cli
from tests.serving import ROOT, ServerThread


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    where = tmp_path_factory.mktemp("cli")
    server = ServerThread(where / "party.db", where / "party.sock", token="tok").start()
    yield server
    server.stop()


@pytest.fixture
def party(served, capsys, monkeypatch):
    """Run ``party ARGS`` against the served app; return (exit status, stdout, stderr)."""
    for name in ("PARTY_SOCKET", "PARTY_HOST", "PARTY_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARTY_TOKEN", "tok")

    def run(*args):
        code = cli.main([*args[:1], "--socket", served.sock, *args[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_add_show_run_delete_in_json(party):
    code, out, _ = party("add", "Noop", "--data", '{"return": 5}', "--json")
    assert code == 0
    (task,) = json.loads(out)
    assert task["party"] == "Noop" and task["data"] == {"return": 5}
    code, out, _ = party("show", task["_id"], "--json")
    assert json.loads(out)["_id"] == task["_id"]
    code, out, _ = party("run", task["_id"], "--json")
    assert json.loads(out)["status"] == "completed" and json.loads(out)["result"] == 5
    code, out, err = party("delete", task["_id"])
    assert code == 1 and "error 409" in err and "completed task cannot be deleted" in err


def test_add_at_a_time_prints_the_task_for_people(party):
    code, out, _ = party("add", "Noop", "--at", "2030-01-01T10:00:00+02:00")
    assert code == 0
    assert "timestamp     2030-01-01T08:00:00.000000Z" in out
    assert "status        queued" in out


def test_add_relative_and_epoch_times(party):
    code, out, _ = party("add", "Noop", "--at", "+2h", "--json")
    assert code == 0 and json.loads(out)[0]["timestamp"] > json.loads(out)[0]["created"]
    code, out, _ = party("add", "Noop", "--at", "0", "--json")
    assert json.loads(out)[0]["timestamp"] == "1970-01-01T00:00:00.000000Z"


def test_list_prints_a_table_and_the_next_cursor(party):
    for _ in range(3):
        party("add", "Spawner")
    code, out, _ = party("list", "--party", "Spawner", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "ID",
        "PARTY",
        "STATUS",
        "ATTEMPTS",
        "TIMESTAMP",
        "DATA",
    ]
    assert len(lines) == 4 and lines[3].startswith("(more: --after ")
    cursor = lines[3].removeprefix("(more: --after ").rstrip(")")
    code, out, _ = party("list", "--party", "Spawner", "--limit", "2", "--after", cursor)
    assert code == 0 and len(out.splitlines()) == 2
    code, out, _ = party("list", "--status", "failed", "--party", "Spawner")
    assert out.splitlines()[-1] == "(none)"


def test_stats_table(party):
    party("add", "Noop")
    code, out, _ = party("stats")
    assert code == 0
    assert out.splitlines()[0].split() == ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "DELETED"]
    assert any(line.startswith("Noop") for line in out.splitlines())
    assert "due now:" in out
    code, out, _ = party("stats", "--json")
    assert set(json.loads(out)) >= {"statuses", "parties", "due", "oldest_due_seconds"}


@pytest.mark.parametrize(
    "args, words",
    [
        (("add", "Nope"), "error 400: item 0: unknown handler 'Nope'; known handlers:"),
        (("add", "Noop", "--data", "[1]"), "--data must be a JSON object"),
        (("add", "Noop", "--data", "{"), "--data is not valid JSON"),
        (("add", "Noop", "--at", "tomorrow"), "bad 'timestamp'"),
        (("show", "123"), "error 400: malformed task id '123'"),
        (("run", "ffffffffffffffffffffffff"), "error 404: no task with id"),
        (("list", "--status", "done"), "error 400: unknown status 'done'"),
    ],
)
def test_refusals_exit_non_zero_with_the_servers_message(party, args, words):
    code, out, err = party(*args)
    assert code in (1, 2) and out == ""
    assert words in err


def test_wrong_token_is_reported(party, monkeypatch):
    monkeypatch.setenv("PARTY_TOKEN", "nope")
    code, _, err = party("stats")
    assert code == 1 and "error 401: wrong token" in err


def test_unreachable_server_is_reported(tmp_path, capsys):
    code = cli.main(["stats", "--socket", str(tmp_path / "none.sock")])
    assert code == 1 and "cannot reach the Party server" in capsys.readouterr().err


@pytest.mark.processes
def test_client_commands_do_not_import_tornado():
    code = "import sys, party.cli; print('tornado' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


@pytest.mark.processes
def test_python_dash_m_party_reads_the_environment(served):
    env = {**os.environ, "PARTY_SOCKET": served.sock, "PARTY_TOKEN": "tok"}
    out = subprocess.run(
        [sys.executable, "-m", "party", "health"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr


def test_serve_takes_grace_as_a_flag_as_well_as_from_the_environment():
    # The server lets force-runs in flight finish for --grace seconds when it stops.
    from party import config

    args = cli.build_parser().parse_args(["serve", "--grace", "2.5"])
    assert config.load(args, environ={"PARTY_GRACE": "9"}).grace == 2.5  # the flag wins
    assert (
        config.load(cli.build_parser().parse_args(["serve"]), environ={"PARTY_GRACE": "9"}).grace
        == 9
    )
    assert cli.build_parser().parse_args(["up", "--grace", "4"]).grace == "4"
