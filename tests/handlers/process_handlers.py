"""Handlers for the worker-pool and scheduler tests: they sleep, crash, hang and recur.

Each appends one JSON line per run to ``data["log"]`` when given (the process tests read it back to
prove what ran, when, where and how often).
"""

import json
import os
import signal
import sys
import time

from party import TaskBase, system_now


def _note(handler, **extra):
    path = handler.data.get("log")
    if path:
        line = {
            "id": handler._id,
            "party": type(handler).__name__,
            "n": handler.data.get("n"),
            "attempts": handler.attempts,
            "pid": os.getpid(),
            "at": system_now().isoformat(),
            "timestamp": handler.timestamp.isoformat(),
            "last_run_on": handler.last_run_on and handler.last_run_on.isoformat(),
            **extra,
        }
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


class Note(TaskBase):
    """Notes its run and returns ``data["n"]``."""

    def run(self):
        _note(self)
        return self.data.get("n")


class ForksChild(TaskBase):
    """Forks a child that comes back out of ``run`` instead of calling ``os._exit``: it returns
    (``data["child"] == "returns"``) or calls ``sys.exit(0)`` (``"exits"``); the parent waits."""

    def run(self):
        _note(self)
        pid = os.fork()
        if pid == 0:
            if self.data.get("child") == "exits":
                sys.exit(0)
            return "child"
        deadline = time.monotonic() + 10.0  # a child lost in the worker's code is killed
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "the child did not end"
            time.sleep(0.01)
        return "parent"


class Sleepy(TaskBase):
    """Notes its start, then sleeps ``data["seconds"]``."""

    def run(self):
        _note(self)
        time.sleep(self.data.get("seconds", 1))
        return "slept"


class DiesFirst(TaskBase):
    """Kills its worker process on its first attempt (no cleanup at all), succeeds afterwards."""

    def run(self):
        _note(self)
        if self.attempts == 1:
            os._exit(7)
        return "survived"


class Hangs(TaskBase):
    """Overruns its one-second timeout on the first attempt, returns at once afterwards."""

    timeout = 1

    def run(self):
        _note(self)
        if self.attempts == 1:
            time.sleep(60)
        return "quick"


class AlwaysFails(TaskBase):
    """Raises on every attempt; ``max_attempts`` stays at the default of 6."""

    def run(self):
        _note(self)
        raise RuntimeError(f"fails on attempt {self.attempts}")


class Ticker(TaskBase):
    """Recurs every ``data["minutes"]`` until it has run ``data["runs"]`` times (per the log)."""

    is_recurring = True

    def run(self):
        _note(self)

    def on_complete(self, tasks):
        with open(self.data["log"]) as f:
            runs = sum(1 for _ in f)
        if runs < self.data["runs"]:
            self.schedule_next_run(minutes=self.data["minutes"])


class Span(TaskBase):
    """Notes its start and its end around a sleep of ``data["seconds"]``: two runs of one task
    that overlap show in the log."""

    def run(self):
        _note(self, edge="start")
        time.sleep(self.data.get("seconds", 1))
        _note(self, edge="end")
        return "spanned"
