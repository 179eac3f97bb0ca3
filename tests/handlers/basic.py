"""Handlers the unit tests load through the registry (``tests/handlers`` as a PARTY_TASKS source).

They record what they saw to the file named by ``data["log"]`` when given, so a test in another
process can read it back.
"""

import json
import os

from party import TaskBase


def _record(handler, **extra):
    path = handler.data.get("log")
    if path:
        line = {"id": handler._id, "party": type(handler).__name__, "attempts": handler.attempts,
                "pid": os.getpid(), **extra}  # fmt: skip
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


class Noop(TaskBase):
    def run(self):
        _record(self)
        return self.data.get("return")


class Boom(TaskBase):
    """Always fails."""

    def run(self):
        _record(self)
        raise RuntimeError(f"boom on attempt {self.attempts}")


class BoomUndecodable(TaskBase):
    """Fails with a message holding a lone surrogate, as a file name that is not UTF-8 decodes."""

    max_attempts = 1

    def run(self):
        raise ValueError("cannot read " + os.fsdecode(b"caf\xe9.txt"))


class FlakyTwice(TaskBase):
    """Fails on its first two attempts, then succeeds."""

    def run(self):
        _record(self)
        if self.attempts <= 2:
            raise ValueError(f"flaky attempt {self.attempts}")
        return "ok"


class SlowRetry(TaskBase):
    max_attempts = 3
    retry_delay = 30

    def run(self):
        raise RuntimeError("always")


class Every5(TaskBase):
    is_recurring = True

    def run(self):
        _record(self)

    def on_complete(self, tasks):
        self.schedule_next_run(minutes=5)


class RecurringNoNext(TaskBase):
    is_recurring = True

    def run(self):
        pass


class Spawner(TaskBase):
    def run(self):
        return "spawned"

    def on_complete(self, tasks):
        tasks.add("Noop", data={"from": self._id})
