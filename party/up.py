"""``party up``: one supervisor process for a server and a scheduler on the same settings.

It starts ``python -m party serve`` and ``python -m party.scheduler`` as children, each in a
process group of its own, so that a Ctrl-C at the terminal reaches the supervisor alone and each
child gets exactly one signal for one stop. The first SIGINT or SIGTERM to the supervisor (as
``docker stop``, systemd with ``KillMode=process`` or supervisord send to the main pid) is passed
on to both children as one SIGTERM: a graceful stop; a second one is passed on too, which each
child takes as "stop now". If either child dies, the other is stopped and the supervisor exits
non-zero naming which one and why. Each child is started with the kernel's parent-death signal
(SIGTERM), so a supervisor killed with SIGKILL leaves nothing running. Settings travel to the
children as ``PARTY_*`` variables (never a token on a command line). An entry point: imports
``config`` and ``pool.owner``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import config
from .pool.owner import die_with_parent

logger = logging.getLogger(__name__)

#: Signals the supervisor waits for (synchronously: they are blocked, never handled).
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
#: Seconds past the grace period a stopping child may take before it is killed.
KILL_AFTER = 15.0


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


def _child_setup(supervisor: int) -> None:
    """Runs in each child between fork and exec."""
    os.setpgid(0, 0)  # a group of its own: a terminal's Ctrl-C reaches the supervisor only
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    die_with_parent(signal.SIGTERM)  # not on Linux: the children then outlive a SIGKILL
    if os.getppid() != supervisor:  # the supervisor died before prctl took effect
        os._exit(1)


def run(settings: config.Settings) -> int:
    """Supervise a server and a scheduler until a stop signal or until one of them ends."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    env.update(config.to_environ(settings))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    commands = {
        "server": [sys.executable, "-m", "party", "serve"],
        "scheduler": [sys.executable, "-m", "party.scheduler"],
    }
    me = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, env=env, preexec_fn=lambda: _child_setup(me))
            logger.info("started the %s (pid %d)", name, children[name].pid)
        return _supervise(children, settings.grace)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def _supervise(children: dict[str, subprocess.Popen[bytes]], grace: float) -> int:
    stops = 0
    failure: str | None = None
    kill_at: float | None = None
    ended: dict[str, int] = {}
    while len(ended) < len(children):
        info = signal.sigtimedwait(_SIGNALS, 0.5)
        if info is not None and info.si_signo != signal.SIGCHLD:
            stops += 1
            name = signal.Signals(info.si_signo).name
            if stops == 1:
                logger.info("received %s: stopping the server and the scheduler", name)
                kill_at = time.monotonic() + grace + KILL_AFTER
            else:
                logger.info("received %s again: stopping them now", name)
            _signal_alive(children, ended, signal.SIGTERM if stops == 1 else signal.SIGINT)
        for name, proc in children.items():
            if name in ended or proc.poll() is None:
                continue
            ended[name] = proc.returncode
            if stops == 0 and failure is None:
                failure = f"the {name} {_describe(proc.returncode)}"
                logger.error("%s: stopping the other one", failure)
                kill_at = time.monotonic() + grace + KILL_AFTER
                _signal_alive(children, ended, signal.SIGTERM)
        if kill_at is not None and time.monotonic() > kill_at:
            logger.error("still running %g s after the stop: killing", grace + KILL_AFTER)
            _signal_alive(children, ended, signal.SIGKILL)
            kill_at = None
    if failure is not None:
        print(f"party up: {failure}", file=sys.stderr)
        return 1
    bad = {name: code for name, code in ended.items() if code != 0}
    for name, code in bad.items():
        print(f"party up: the {name} {_describe(code)}", file=sys.stderr)
    return 1 if bad else 0


def _signal_alive(
    children: dict[str, subprocess.Popen[bytes]], ended: dict[str, int], sig: signal.Signals
) -> None:
    for name, proc in children.items():
        if name not in ended and proc.poll() is None:
            proc.send_signal(sig)
