"""Handlers for the HTTP server tests (names must not clash with the other test handlers)."""

import time

from party import TaskBase


class Doze(TaskBase):
    """Sleeps ``data["seconds"]`` (default 1) and returns how long it slept."""

    def run(self):
        seconds = float(self.data.get("seconds", 1.0))
        time.sleep(seconds)
        return {"slept": seconds, "attempt": self.attempts}
