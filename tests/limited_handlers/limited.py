"""Handlers with ``max_running`` for the limit tests (kept apart from tests/handlers, whose
registry every other test shares: a limit there would send all their claims down the capped path).

Each run appends a JSON line at its start and one at its end (epoch seconds) to ``data["log"]``.
"""

import json
import os
import time

from party import TaskBase


def _log(handler, event):
    path = handler.data.get("log")
    if path:
        line = {"id": handler._id, "party": type(handler).__name__, "pid": os.getpid(),
                "attempts": handler.attempts, "event": event, "at": time.time()}  # fmt: skip
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


class _Logged(TaskBase):
    def run(self):
        _log(self, "start")
        time.sleep(self.data.get("seconds", 0))
        _log(self, "end")
        return "ran"


class OneAtATime(_Logged):
    """At most one run at once across every scheduler."""

    max_running = 1


class TwoAtATime(_Logged):
    """At most two runs at once."""

    max_running = 2


class Free(_Logged):
    """No limit."""


class Dies(TaskBase):
    """Limited to one; kills its worker on the first attempt (a crash mid-run)."""

    max_running = 1

    def run(self):
        if self.attempts == 1:
            os._exit(9)
        return "survived"
