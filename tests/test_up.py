"""``party up`` as a supervisor, with real processes: one signal to its own pid stops both
children gracefully, a Ctrl-C to its whole group costs no task its grace, a child that dies
takes the other down with a message naming it, and a SIGKILL of the supervisor leaves nothing.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from serving import HANDLERS, ROOT, free_port

from party.client import BlockingHTTPClient, PartyClientError

pytestmark = pytest.mark.processes


class Up:
    """``python -m party up`` in a process group of its own, as a terminal starts it."""

    def __init__(self, tmp_path, *args, grace=10):
        self.tmp_path = tmp_path
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
        env.update(PARTY_WORKERS="1", PARTY_POLL_INTERVAL="0.2", PARTY_GRACE=str(grace))
        self.log_path = tmp_path / "up.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "party", "up", "--store", f"sqlite:///{tmp_path}/p.db",
             "--tasks", str(HANDLERS), "--port", str(self.port), "--lease", "5", *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.children = wait_for(self._children, 10, "the server and the scheduler to start")
        self.client = BlockingHTTPClient(f"127.0.0.1:{self.port}", timeout=5)
        wait_for(self._answers, 20, "the server to answer")

    def _children(self):
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        pids = [int(p) for p in Path(path).read_text().split()]
        return pids if len(pids) == 2 else None

    def _answers(self):
        assert self.proc.poll() is None, self.log()
        try:
            self.client("/health")
            return True
        except PartyClientError:
            return False

    def log(self):
        return self.log_path.read_text(errors="replace")

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        self.client.close()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def up(tmp_path):
    started = []

    def start(*args, **kwargs):
        started.append(Up(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for u in started:
        u.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_one_signal_to_its_own_pid_stops_both_children_gracefully_and_exits_0(up, sig):
    u = up()
    task = u.client.add("Noop", {"return": "via scheduler"})
    wait_for(lambda: u.client.get(task["_id"])["status"] == "completed", 10, "the task to run")
    os.kill(u.proc.pid, sig)  # its pid alone, as docker stop and systemd KillMode=process do
    assert u.proc.wait(20) == 0, u.log()
    assert not any(alive(pid) for pid in u.children), u.log()
    assert "server stopped" in u.log() and "stopped" in u.log()


def test_ctrl_c_to_the_whole_group_is_one_stop_that_keeps_the_grace(up, tmp_path):
    u = up(grace=20)
    log = tmp_path / "runs"
    task = u.client.add("Sleepy", {"seconds": 1.5, "log": str(log)})
    wait_for(log.exists, 10, "the task to start")
    os.killpg(u.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: reaches the supervisor only
    assert u.proc.wait(30) == 0, u.log()
    from party.stores.sqlite import SqliteStore

    with SqliteStore(tmp_path / "p.db") as store:
        stored = store.get(task["_id"])
    # One signal reached the scheduler: it let the run finish instead of cutting it short.
    assert (stored.status, stored.attempts) == ("completed", 1), u.log()


def test_a_child_that_dies_stops_the_other_and_is_named_in_a_non_zero_exit(up):
    u = up()
    server, scheduler = u.children  # started in this order
    os.kill(scheduler, signal.SIGKILL)
    assert u.proc.wait(20) == 1, u.log()
    assert "the scheduler was killed by signal 9 (SIGKILL)" in u.log()
    assert not alive(server)


def test_a_killed_supervisor_leaves_nothing_running(up):
    u = up()
    os.kill(u.proc.pid, signal.SIGKILL)
    u.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in u.children), 10, "the children to stop")
