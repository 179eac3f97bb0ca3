"""Enqueue over HTTP: tasks per second into a running ``python -m party serve``.

Single-task ``POST /tasks`` on kept-alive connections from 1 and from 8 client processes (processes,
so the clients' GIL is not what is measured), over TCP and over the Unix socket, and batches of 100
and 1,000 tasks per POST over TCP. Each run measures the bare Tornado handler
(``bench/bare_tornado.py``) on the same workload right after Party, so every figure is also a ratio
to what Tornado itself does on this machine at that moment. Bodies are encoded before the clock
starts; the clients use ``http.client`` directly.

Then the in-process add (``party.open``, no server; the peer harness's W1 for ``party-local``): one
``add`` per task from one process on a fresh store, durable (the store's default,
``synchronous=full``: one sync of the log per add), the same from 8 threads at once (their
commits share syncs), and with ``?synchronous=normal``.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import harness

SECTION = "enqueue"

#: (workload, transports, full-size, quick-size): size is requests for single-task workloads, tasks
#: for batched ones.
WORKLOADS = (
    ("single x1", ("tcp", "unix"), 3000, 600),
    ("single x8", ("tcp", "unix"), 6000, 1200),
    ("batch 100", ("tcp",), 30_000, 5_000),
    ("batch 1000", ("tcp",), 60_000, 10_000),
)
#: Single-task enqueue target, as a ratio to the bare Tornado handler in the same run.
SINGLE_RATIO_TARGET = 0.6
#: Tasks per second through POSTs of 1,000 tasks.
BATCH_1000_TARGET = 40_000.0
#: In-process adds, one per call: (label, store URL option, full-size, quick-size); "x8" adds
#: from 8 threads of one process at once (a durable store's commits then share their syncs).
LOCAL_WORKLOADS = (
    ("in-process single x1", "", 3000, 600),
    ("in-process single x8 threads", "", 6000, 1200),
    ("in-process single x1 synchronous=normal", "?synchronous=normal", 20_000, 3000),
)


def _bodies(n_tasks: int, batch: int, offset: int) -> list[bytes]:
    bodies = []
    for first in range(0, n_tasks, batch):
        items = [
            {"party": "BenchNoop", "data": {"i": offset + first + k}}
            for k in range(min(batch, n_tasks - first))
        ]
        bodies.append(json.dumps({"tasks": items}).encode())
    return bodies


def _client(
    address: str, bodies: list[bytes], barrier: Any, results: Any, warmup: bytes
) -> None:  # pragma: no cover - runs in a child process
    conn = harness.connect(address)
    harness.call(conn, "POST", "/tasks", warmup)  # connect and warm up off the clock
    barrier.wait()
    bad = 0
    started = time.time()
    for body in bodies:
        status, _ = harness.call(conn, "POST", "/tasks", body)
        if status != 201:
            bad += 1
    ended = time.time()
    conn.close()
    results.put((started, ended, bad))


def load(address: str, n_tasks: int, batch: int, clients: int, offset: int) -> dict[str, Any]:
    """Send ``n_tasks`` tasks in POSTs of ``batch`` from ``clients`` processes; tasks/s."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    per_client = n_tasks // clients
    warmup = json.dumps({"tasks": [{"party": "BenchNoop", "data": {"warmup": True}}]}).encode()
    procs = []
    for k in range(clients):
        bodies = _bodies(per_client, batch, offset + k * per_client)
        proc = ctx.Process(target=_client, args=(address, bodies, barrier, results, warmup))
        proc.start()
        procs.append(proc)
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join()
    started = min(o[0] for o in outcomes)
    ended = max(o[1] for o in outcomes)
    bad = sum(o[2] for o in outcomes)
    total = per_client * clients
    return {
        "tasks": total,
        "seconds": ended - started,
        "rate": total / (ended - started),
        "bad": bad,
    }


def _local_client(
    store: str, n: int, threads: int, results: Any
) -> None:  # pragma: no cover - a child
    with harness.open_local(store) as queue:
        queue.add("BenchNoop", data={"warmup": True})  # open the channel and warm up off the clock

        def adds(first: int) -> None:
            for i in range(first, n, threads):
                queue.add("BenchNoop", data={"i": i})

        pool = [threading.Thread(target=adds, args=(k,)) for k in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        seconds = time.perf_counter() - started
    results.put(seconds)


def load_local(store: str, n: int, threads: int = 1) -> dict[str, Any]:
    """``n`` in-process adds, one task per call, from ``threads`` threads of a fresh process
    (forked: the handle is opened there, as an application would); tasks/s."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_local_client, args=(store, n, threads, results))
    proc.start()
    seconds = results.get(timeout=300)
    proc.join()
    return {"tasks": n, "seconds": seconds, "rate": n / seconds}


def run(quick: bool, runs: int) -> dict[str, Any]:
    """Every workload on both transports, Party then bare Tornado, ``runs`` times."""
    party_rates: dict[str, list[float]] = {}
    bare_rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    local_rates: dict[str, list[float]] = {}
    errors: list[str] = []
    offset = 0
    for run_index in range(runs):
        for transport in ("tcp", "unix"):
            with harness.workdir() as tmp:
                store = harness.store_url(Path(tmp) / "party.db")
                server = harness.start_server(tmp, store, unix=transport == "unix")
                try:
                    bare = harness.start_bare(tmp, unix=transport == "unix")
                except BaseException:
                    server.stop()
                    raise
                try:
                    for workload, transports, full, small in WORKLOADS:
                        if transport not in transports:
                            continue
                        n = small if quick else full
                        clients = 8 if workload.endswith("x8") else 1
                        batch = int(workload.split()[1]) if workload.startswith("batch") else 1
                        key = f"{workload} {transport}"
                        party = load(server.address, n, batch, clients, offset)
                        offset += n
                        ceiling = load(bare.address, n, batch, clients, 0)
                        if party["bad"]:
                            errors.append(f"{key}: {party['bad']} requests not answered 201")
                        party_rates.setdefault(key, []).append(party["rate"])
                        bare_rates.setdefault(key, []).append(ceiling["rate"])
                        ratios.setdefault(key, []).append(party["rate"] / ceiling["rate"])
                        harness.progress(
                            f"enqueue run {run_index + 1}/{runs} {key}: party "
                            f"{party['rate']:,.0f}/s, bare tornado {ceiling['rate']:,.0f}/s "
                            f"({party['rate'] / ceiling['rate']:.2f}x)"
                        )
                finally:
                    server.stop()
                    bare.stop()
        for label, option, full, small in LOCAL_WORKLOADS:
            with harness.workdir() as tmp:
                url = "sqlite:///" + str(tmp / "party.db") + option
                if not option:
                    url = harness.store_url(tmp / "party.db")  # PARTY_BENCH_SYNCHRONOUS applies
                threads = 8 if " x8 " in label else 1
                local = load_local(url, small if quick else full, threads)
            local_rates.setdefault(label, []).append(local["rate"])
            harness.progress(f"enqueue run {run_index + 1}/{runs} {label}: {local['rate']:,.0f}/s")
    figures = []
    for label, rates in local_rates.items():
        figures.append(harness.figure(SECTION, label, rates, "tasks/s"))
    for key, rates in party_rates.items():
        is_single = key.startswith("single")
        target = BATCH_1000_TARGET if key.startswith("batch 1000") else None
        figures.append(harness.figure(SECTION, f"{key} party", rates, "tasks/s", target=target))
        figures.append(harness.figure(SECTION, f"{key} bare tornado", bare_rates[key], "tasks/s"))
        figures.append(
            harness.figure(
                SECTION,
                f"{key} ratio to bare",
                ratios[key],
                "x",
                target=SINGLE_RATIO_TARGET if is_single else None,
            )
        )
    return {"figures": figures, "errors": errors}
