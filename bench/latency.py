"""Start latency (issue 8): immediate and scheduled tasks on an idle scheduler, and idle CPU.

Each run starts ``python -m party serve`` (TCP) and ``python scheduler/ --workers 2`` on a fresh
store, warms them up with two tasks, then:

- immediate: 300 ``BenchStamp`` tasks for now, one POST every 33 ms; latency = ``time.time()`` at
  the start of ``run()`` minus ``time.time()`` just before the POST (the request is included);
- scheduled: 300 tasks due at whole-microsecond times spread over 10 s, each added by its own POST
  3 s ahead; lateness = start of ``run()`` minus the due time (negative = started early).

- immediate in-process: the same 300 tasks added with ``party.open`` beside the store instead of
  over HTTP (the peer harness's W4 for ``party-local``): the store's wake-up alone reaches the
  scheduler.

Each run also times the floor under the immediate figure: the same POST, one every 33 ms, to the
bare Tornado handler of ``bench/bare_tornado.py`` (parse the JSON, answer; no store, no task), as
a round trip. ``--quick`` uses 60 tasks and a 3 s spread. After the runs, the idle CPU of a server
and a scheduler with its 2 workers (every process of both trees, from ``/proc/<pid>/stat``) is read
over 30 s in three 10 s windows (quick: one of 5 s), as % of one core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import harness

SECTION = "latency"
N = 300
QUICK_N = 60
INTERVAL = 0.033
SPREAD = 10.0
QUICK_SPREAD = 3.0
LEAD = 3.0
P99_TARGET_MS = 2.0
#: Immediate start p99 with the in-process add (issue 22: Huey on Redis, the best peer, 1.9 ms).
LOCAL_P99_TARGET_MS = 1.0
IDLE_TARGET = 1.0
IDLE_WINDOWS = (10.0, 10.0, 10.0)
QUICK_IDLE_WINDOWS = (5.0,)
EPOCH = datetime(1970, 1, 1)


def read_stamps(path: Path) -> dict[int, tuple[float, float]]:
    """``i -> (due, start)`` from the stamp file (the first line per task; warm-ups excluded)."""
    stamps: dict[int, tuple[float, float]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return stamps
    for line in text.splitlines():
        i, due, start = line.split()
        if int(i) >= 0:
            stamps.setdefault(int(i), (float(due), float(start)))
    return stamps


def wait_for(path: Path, n: int, timeout: float, warmups: int = 0) -> None:
    """Wait until ``path`` holds ``n`` lines, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.read_bytes().count(b"\n") >= n + warmups:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)


def _task(i: int, due: float, stamp: Path, timestamp: str | None = None) -> bytes:
    item: dict[str, Any] = {"party": "BenchStamp", "data": {"i": i, "due": due, "file": str(stamp)}}
    if timestamp is not None:
        item["timestamp"] = timestamp
    return json.dumps({"tasks": [item]}).encode()


def _post(conn: Any, body: bytes) -> None:
    status, answer = harness.call(conn, "POST", "/tasks", body)
    if status != 201:
        raise RuntimeError(f"POST /tasks answered {status}: {answer[:200]!r}")


def paced(n: int) -> Iterator[int]:
    """``0 .. n-1``, each yielded on its slot of one every ``INTERVAL`` seconds."""
    first = time.monotonic() + 0.05
    for i in range(n):
        delay = first + i * INTERVAL - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield i


def immediate(address: str, stamp: Path, n: int) -> dict[str, Any]:
    """``n`` tasks for now, one every 33 ms; latency percentiles in ms."""
    conn = harness.connect(address)
    for i in paced(n):
        before = time.time()
        _post(conn, _task(i, before, stamp))
    conn.close()
    wait_for(stamp, n, 30.0, warmups=2)
    return _summary(read_stamps(stamp), n)


def scheduled(address: str, stamp: Path, n: int, spread: float = SPREAD) -> dict[str, Any]:
    """``n`` tasks due over ``spread`` seconds, added 3 s ahead; lateness percentiles in ms."""
    conn = harness.connect(address)
    base_us = int((time.time() + LEAD) * 1e6)
    step_us = int(spread * 1e6 / n)
    for i in range(n):
        due_us = base_us + i * step_us
        when = (EPOCH + timedelta(microseconds=due_us)).isoformat() + "Z"
        _post(conn, _task(i, due_us / 1e6, stamp, when))
    conn.close()
    remaining = base_us / 1e6 + spread - time.time()
    wait_for(stamp, n, remaining + 30.0, warmups=2)
    return _summary(read_stamps(stamp), n)


def immediate_local(store: str, stamp: Path, n: int) -> dict[str, Any]:
    """``n`` tasks for now added in-process (``party.open``), one every 33 ms; latency percentiles
    in ms (``time.time()`` just before ``add`` to the start of ``run()``)."""
    with harness.open_local(store) as queue:
        for i in (-1, -2):  # warm-up through the whole path, as for HTTP
            queue.add("BenchStamp", data={"i": i, "due": time.time(), "file": str(stamp)})
        wait_for(stamp, 0, 30.0, warmups=2)
        time.sleep(1.0)
        for i in paced(n):
            before = time.time()
            queue.add("BenchStamp", data={"i": i, "due": before, "file": str(stamp)})
    wait_for(stamp, n, 30.0, warmups=2)
    return _summary(read_stamps(stamp), n)


def bare_round_trip(address: str, stamp: Path, n: int) -> dict[str, Any]:
    """``n`` POSTs of the immediate workload's body to the bare Tornado handler, one every 33 ms;
    round-trip percentiles in ms (what HTTP through Tornado alone costs at this pace)."""
    conn = harness.connect(address)
    for i in (-1, -2):  # warm-up, as for Party
        _post(conn, _task(i, time.time(), stamp))
    trips = []
    for i in paced(n):
        before = time.perf_counter()
        _post(conn, _task(i, time.time(), stamp))
        trips.append((time.perf_counter() - before) * 1000.0)
    conn.close()
    summary = {f"{k}_ms": v for k, v in harness.percentiles(trips).items()}
    summary.update(n=n, received=n)
    return summary


def _summary(stamps: dict[int, tuple[float, float]], n: int) -> dict[str, Any]:
    late = [(start - due) * 1000.0 for due, start in stamps.values()]
    summary = {f"{k}_ms": v for k, v in harness.percentiles(late).items()}
    summary.update(n=n, received=len(stamps), early=sum(1 for x in late if x < 0))
    return summary


def warm_up(address: str, stamp: Path) -> None:
    """Two tasks through the whole path (HTTP, store, scheduler, worker) before measuring."""
    conn = harness.connect(address)
    for i in (-1, -2):
        _post(conn, _task(i, time.time(), stamp))
    conn.close()
    wait_for(stamp, 0, 30.0, warmups=2)


def idle_cpu(server: harness.Proc, scheduler: harness.Proc, windows: tuple[float, ...]) -> list:
    """% of one core used by both process trees, per window."""
    shares = []
    for seconds in windows:
        before = harness.tree_cpu([server.pid, scheduler.pid])
        t0 = time.monotonic()
        time.sleep(seconds)
        after = harness.tree_cpu([server.pid, scheduler.pid])
        wall = time.monotonic() - t0
        used = sum(after[p] - before.get(p, 0.0) for p in after)
        shares.append({"percent": 100.0 * used / wall, "seconds": wall, "processes": len(after)})
        harness.progress(
            f"latency: idle CPU {shares[-1]['percent']:.2f}% of one core over {wall:.0f} s "
            f"({len(after)} processes)"
        )
    return shares


def _report(k: int, runs: int, name: str, outcome: dict[str, Any], n: int) -> None:
    harness.progress(
        f"latency run {k + 1}/{runs} {name}: p50 {outcome['p50_ms']:.2f} ms, "
        f"p99 {outcome['p99_ms']:.2f} ms, max {outcome['max_ms']:.1f} ms, "
        f"min {outcome['min_ms']:.2f} ms ({outcome['received']}/{n})"
    )


def run(quick: bool, runs: int) -> dict[str, Any]:
    """``runs`` runs of both workloads, each on a fresh server and scheduler; then idle CPU."""
    n = QUICK_N if quick else N
    results: dict[str, list[dict[str, Any]]] = {
        "immediate": [], "scheduled": [], "in-process": [], "bare": []
    }  # fmt: skip
    idle: list[dict[str, Any]] = []
    for k in range(runs):
        with harness.workdir() as tmp:
            store = harness.store_url(tmp / "party.db")
            server = harness.start_server(tmp, store)
            scheduler = harness.start_scheduler(tmp, store)
            try:
                for name in ("immediate", "scheduled"):
                    stamp = tmp / f"stamps-{name}"
                    warm_up(server.address, stamp)
                    time.sleep(1.0)
                    if name == "immediate":
                        outcome = immediate(server.address, stamp, n)
                    else:
                        outcome = scheduled(
                            server.address, stamp, n, QUICK_SPREAD if quick else SPREAD
                        )
                    results[name].append(outcome)
                    _report(k, runs, name, outcome, n)
                outcome = immediate_local(store, tmp / "stamps-in-process", n)
                results["in-process"].append(outcome)
                _report(k, runs, "immediate in-process", outcome, n)
                if k == runs - 1:
                    time.sleep(2.0)
                    windows = QUICK_IDLE_WINDOWS if quick else IDLE_WINDOWS
                    idle = idle_cpu(server, scheduler, windows)
            finally:
                server.stop()
                scheduler.stop()
            bare = harness.start_bare(tmp)
            try:
                outcome = bare_round_trip(bare.address, tmp / "stamps-bare", n)
            finally:
                bare.stop()
            results["bare"].append(outcome)
            harness.progress(
                f"latency run {k + 1}/{runs} bare Tornado round trip: p50 "
                f"{outcome['p50_ms']:.2f} ms, p99 {outcome['p99_ms']:.2f} ms"
            )
    figures = []
    errors = []
    labels = {"immediate": "latency", "scheduled": "lateness", "in-process": "immediate latency",
              "bare": "Tornado POST round trip"}  # fmt: skip
    for name, outcomes in results.items():
        label = labels[name]
        for q in ("p50", "p95", "p99", "max", "min"):
            target = None
            higher = False
            if name == "bare":
                pass  # the floor: no target of its own
            elif q == "p99":
                target = LOCAL_P99_TARGET_MS if name == "in-process" else P99_TARGET_MS
            elif q == "min" and name == "scheduled":
                target, higher = 0.0, True
            figures.append(
                harness.figure(
                    SECTION,
                    f"{name} {label} {q}",
                    [o[f"{q}_ms"] for o in outcomes],
                    "ms",
                    target=target,
                    higher_is_better=higher,
                )  # fmt: skip
            )
        for o in outcomes:
            if o["received"] < o["n"]:
                errors.append(f"{name}: only {o['received']} of {o['n']} tasks ran")
    figures.append(
        harness.figure(
            SECTION,
            "idle CPU, server + scheduler trees",
            [w["percent"] for w in idle],
            "% core",
            target=IDLE_TARGET,
            higher_is_better=False,
            target_text="< 1",
        )  # fmt: skip
    )
    return {"figures": figures, "errors": errors, "runs_detail": results, "idle": idle}
