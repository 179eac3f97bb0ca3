"""Handlers for the concurrency tests: async and plain naps, overruns, a loop blocker, a gate.

Each appends one JSON line per run start to ``data["log"]`` when given; the worker hooks append
to ``PARTY_TEST_HOOK_LOG`` and the start hook raises while ``PARTY_TEST_HOOK_FAIL`` names a file
that exists.
"""

import asyncio
import json
import os
import threading
import time

import party
from party import TaskBase, system_now

_shared = {}


def _note(handler, **extra):
    path = handler.data.get("log")
    if path:
        line = {
            "id": handler._id,
            "party": type(handler).__name__,
            "n": handler.data.get("n"),
            "attempts": handler.attempts,
            "pid": os.getpid(),
            "thread": threading.get_ident(),
            "at": system_now().isoformat(),
            **extra,
        }
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


@party.on_worker_start
async def open_client():
    path = os.environ.get("PARTY_TEST_HOOK_LOG")
    fail = os.environ.get("PARTY_TEST_HOOK_FAIL")
    if fail and os.path.exists(fail):
        raise RuntimeError("the test's start hook fails on purpose")
    _shared["client"] = {"pid": os.getpid(), "loop": id(asyncio.get_running_loop())}
    if path:
        with open(path, "a") as f:
            f.write(f"start {os.getpid()}\n")


@party.on_worker_stop
def close_client():
    path = os.environ.get("PARTY_TEST_HOOK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"stop {os.getpid()}\n")


class AsyncNap(TaskBase):
    """Awaits ``data["seconds"]``; returns what the start hook opened in this process."""

    async def run(self):
        _note(self)
        await asyncio.sleep(self.data.get("seconds", 0.2))
        client = _shared.get("client")
        same_loop = client is not None and client["loop"] == id(asyncio.get_running_loop())
        return {"pid": os.getpid(), "hooked": client is not None, "same_loop": same_loop}


class ThreadNap(TaskBase):
    """Sleeps ``data["seconds"]`` in a thread of the worker."""

    def run(self):
        _note(self)
        time.sleep(self.data.get("seconds", 0.2))
        return {"pid": os.getpid(), "hooked": "client" in _shared}


class AsyncHangs(TaskBase):
    """Overruns its one-second timeout (awaiting) on its first attempt."""

    timeout = 1

    async def run(self):
        _note(self)
        if self.attempts == 1:
            await asyncio.sleep(60)
        return "quick"


class ThreadHangs(TaskBase):
    """Overruns its one-second timeout (sleeping in its thread) on its first attempt."""

    timeout = 1

    def run(self):
        _note(self)
        if self.attempts == 1:
            time.sleep(self.data.get("seconds", 3))
        return "quick"


class BlocksLoop(TaskBase):
    """An async handler that blocks its worker's event loop with time.sleep."""

    async def run(self):
        _note(self)
        time.sleep(self.data.get("seconds", 1.0))
        return "blocked"


class Gate(TaskBase):
    """Notes its start, then waits until ``data["gate"]`` exists (at most 30 s)."""

    def run(self):
        _note(self)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.data["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "opened"


class AsyncOnComplete(TaskBase):
    """A plain run whose async on_complete adds a follow-up."""

    def run(self):
        return 1

    async def on_complete(self, tasks):
        await asyncio.sleep(0)
        tasks.add("ThreadNap", data={"seconds": 0})
