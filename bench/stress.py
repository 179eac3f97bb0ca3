"""The server under stress: what other requests see while one fault or heavy request lasts.

- ``8 MB body``: one POST of 5,000 tasks (about 8 MB) while another client calls ``/health`` in a
  loop: the slowest ``/health`` answer during the POST, the POST's time, and the server's peak
  resident memory (VmHWM) above what it held before.
- ``held lock``: the writers' lock file (``<db>.lock``) held by this process (as a stopped
  scheduler would hold it): time to a ``/health`` answer and its status, time to an add's answer
  and its status.
- ``stats poll``: single-task adds for a few seconds on a queue of 200,000 (20,000 with
  ``--quick``) tasks, while another client polls ``/stats`` without pause: adds per second, and
  the same without the poller.

The figures go to docs/server-faults.md. Each is the median of ``runs`` runs.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path
from typing import Any

import harness

SECTION = "stress"


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of ``pid`` in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def big_body(address: str, pid: int) -> dict[str, float]:
    """One ~8 MB POST while /health is polled."""
    items = [{"party": "BenchNoop", "data": {"blob": "x" * 1500, "i": i}} for i in range(5000)]
    body = json.dumps({"tasks": items}).encode()
    before = _vm_rss(pid)
    done = threading.Event()
    result: dict[str, Any] = {}

    def post() -> None:
        conn = harness.connect(address)
        started = time.perf_counter()
        result["status"], _ = harness.call(conn, "POST", "/tasks", body)
        result["seconds"] = time.perf_counter() - started
        conn.close()
        done.set()

    conn = harness.connect(address)
    harness.call(conn, "GET", "/health")
    thread = threading.Thread(target=post)
    thread.start()
    slowest = 0.0
    while not done.is_set():
        started = time.perf_counter()
        harness.call(conn, "GET", "/health")
        slowest = max(slowest, time.perf_counter() - started)
    thread.join()
    conn.close()
    assert result["status"] == 201, result
    return {
        "health_max_ms": slowest * 1000,
        "post_s": result["seconds"],
        "peak_mb": (_vm_hwm(pid) - before) / 1e6,
        "body_mb": len(body) / 1e6,
    }


def held_lock(address: str, db: Path) -> dict[str, float]:
    """/health and an add while the writers' lock is held from outside."""
    time.sleep(1.1)  # the cached health answer expires
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.perf_counter()
        health, _ = harness.call_json(address, "GET", "/health")
        health_s = time.perf_counter() - started
        started = time.perf_counter()
        add, _ = harness.call_json(address, "POST", "/tasks", {"tasks": [{"party": "BenchNoop"}]})
        add_s = time.perf_counter() - started
    return {"health_s": health_s, "health_status": health, "add_s": add_s, "add_status": add}


def adds_while_polled(address: str, seconds: float, poll: bool) -> float:
    """Single-task adds per second for ``seconds``, with or without a /stats poller."""
    stop = threading.Event()

    def poller() -> None:
        conn = harness.connect(address)
        while not stop.is_set():
            harness.call(conn, "GET", "/stats")
        conn.close()

    thread = threading.Thread(target=poller, daemon=True)
    if poll:
        thread.start()
    body = json.dumps({"tasks": [{"party": "BenchNoop"}]}).encode()
    conn = harness.connect(address)
    added, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, _ = harness.call(conn, "POST", "/tasks", body)
        added += status == 201
    conn.close()
    stop.set()
    if poll:
        thread.join(30)
    return added / seconds


def run(quick: bool, runs: int) -> dict[str, Any]:
    """Every stress case, ``runs`` times, each on a fresh server and store."""
    found: dict[str, list[float]] = {}
    size = 20_000 if quick else 200_000
    for _ in range(runs):
        with harness.workdir() as tmp:
            db = tmp / "party.db"
            harness.fill_queue(db, size)
            server = harness.start_server(tmp, harness.store_url(db))
            try:
                assert server.address is not None
                for key, value in big_body(server.address, server.pid).items():
                    found.setdefault(f"8 MB body {key}", []).append(value)
                for key, value in held_lock(server.address, db).items():
                    found.setdefault(f"held lock {key}", []).append(value)
                for poll in (False, True):
                    rate = adds_while_polled(server.address, 2.0 if quick else 5.0, poll)
                    name = f"adds/s at {size:,} tasks {'with' if poll else 'without'} /stats poller"
                    found.setdefault(name, []).append(rate)
            finally:
                server.stop()
        harness.progress("stress: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in found.items()))
    figures = [harness.figure(SECTION, name, values, "") for name, values in found.items()]
    return {"figures": figures}
