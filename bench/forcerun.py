"""Force-run: the round trip of ``POST /task/<id>`` for a no-op task, on a running server.

The tasks are added in one batch, due an hour from now (so nothing but the force-run touches them;
no scheduler runs). Each request is timed from before the POST to the end of the answer, which the
server sends once the task has run in its warm worker and the outcome is stored. The first few are
warm-ups, off the clock.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import harness

SECTION = "forcerun"
N = 200
QUICK_N = 50
WARMUP = 5
TARGET_MS = 10.0


def round_trips(address: str, n: int) -> list[float]:
    """Add ``n + WARMUP`` future tasks, force-run each; the timed round trips in ms."""
    from party.timestamps import format_timestamp, system_now

    when = format_timestamp(system_now() + timedelta(hours=1))
    items = [{"party": "BenchNoop", "data": {"i": i}, "timestamp": when} for i in range(n + WARMUP)]
    status, added = harness.call_json(address, "POST", "/tasks", {"tasks": items})
    if status != 201:
        raise RuntimeError(f"POST /tasks answered {status}: {added}")
    conn = harness.connect(address)
    times = []
    try:
        for k, task in enumerate(added):
            path = f"/task/{task['_id']}"
            started = time.perf_counter()
            status, body = harness.call(conn, "POST", path, b"{}")
            elapsed = (time.perf_counter() - started) * 1000.0
            if status != 200 or json.loads(body)["status"] != "completed":
                raise RuntimeError(f"POST {path} answered {status}: {body[:200]!r}")
            if k >= WARMUP:
                times.append(elapsed)
    finally:
        conn.close()
    return times


def run(quick: bool, runs: int) -> dict[str, Any]:
    """``runs`` runs of ``N`` force-runs, each on a fresh server."""
    outcomes = []
    for k in range(runs):
        with harness.workdir() as tmp:
            server = harness.start_server(tmp, harness.store_url(tmp / "party.db"))
            try:
                outcome = harness.percentiles(round_trips(server.address, QUICK_N if quick else N))
            finally:
                server.stop()
        outcomes.append(outcome)
        harness.progress(
            f"forcerun run {k + 1}/{runs}: median {outcome['p50']:.2f} ms, "
            f"p95 {outcome['p95']:.2f} ms, max {outcome['max']:.1f} ms"
        )
    figures = [
        harness.figure(
            SECTION, "force-run round trip p50", [o["p50"] for o in outcomes], "ms",
            target=TARGET_MS, higher_is_better=False, target_text="< 10",
        ),
        harness.figure(SECTION, "force-run round trip p95", [o["p95"] for o in outcomes], "ms"),
        harness.figure(SECTION, "force-run round trip max", [o["max"] for o in outcomes], "ms"),
    ]  # fmt: skip
    return {"figures": figures, "runs_detail": outcomes}
