"""Floors: what this machine allows below any Party code, measured with the standard library alone.

The speed targets of the in-process add (issue 22) sit beside these. No Party code runs in the
measured loops.

- durable commits: single-row inserts, each its own transaction under SQLite's
  ``synchronous = FULL`` (one sync of the log per commit). They go into a store file made by Party
  (``SqliteStore``: the table, the id index, the queue-order index and the count triggers) and,
  alternating with it, into the schema Huey's ``SqliteStorage`` creates (a table and one index;
  its DDL is copied below). This is the most a durable one-call-per-task add can reach with each
  schema (W1 of the peer harness).
- add to start: the shortest pipeline of Party's shape, in raw Python. One process inserts a row
  and sends a datagram to each of two worker processes blocked in ``select``. The insert runs under
  ``synchronous = NORMAL``: Party's durable add also wakes the workers before its sync. The
  worker that wins claims the due rows in one ``UPDATE ... RETURNING`` and writes start minus due.
  300 adds 33 ms apart, as W4 paces them (quick: 60); p50 and p99 in ms.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

SECTION = "floors"
COMMITS = 2000
QUICK_COMMITS = 500
ROUNDS = 4  # the two schemas alternate in rounds: the machine drifts within minutes
ADDS = 300
QUICK_ADDS = 60
INTERVAL = 0.033
WORKERS = 2

#: What Huey's SqliteStorage creates for its queue (huey/storage.py), and how it adds a task.
HUEY_DDL = (
    "CREATE TABLE task (id INTEGER NOT NULL PRIMARY KEY, queue TEXT NOT NULL, "
    "data BLOB NOT NULL, priority REAL NOT NULL DEFAULT 0.0)",
    "CREATE INDEX task_queue_priority_id ON task (queue, priority DESC, id)",
)
HUEY_INSERT = "INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)"


def _party_adder(path: Path) -> Callable[[int], None]:
    """One durable commit of a fresh queued task into a store file made by Party."""
    from party.stores.sqlite import SqliteStore  # harness put the checkout on sys.path

    SqliteStore(str(path)).close()  # the schema, its indexes and triggers, as Party makes them
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default (Party checkpoints itself)
    sql = (
        "INSERT INTO tasks (id, party, data, timestamp, created, run_at) "
        "VALUES (?, 'BenchNoop', ?, ?, ?, ?)"
    )

    def add(i: int) -> None:
        now = int(time.time() * 1e6)
        db.execute("BEGIN IMMEDIATE")
        db.execute(sql, (f"{i:024x}", f'{{"i":{i}}}', now, now, now))
        db.execute("COMMIT")

    return add


def _huey_adder(path: Path) -> Callable[[int], None]:
    """One durable commit of a task into Huey's schema, as its SqliteStorage makes one."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    for statement in HUEY_DDL:
        db.execute(statement)

    def add(i: int) -> None:
        db.execute("BEGIN")
        db.execute(HUEY_INSERT, ("bench", pickle.dumps(("noop", i, {"i": i})), 0.0))
        db.execute("COMMIT")

    return add


def durable_commits(tmp: Path, n: int) -> dict[str, float]:
    """Commits per second into each schema: the median of ``ROUNDS`` alternating rounds."""
    adders = {"party": _party_adder(tmp / "party.db"), "huey": _huey_adder(tmp / "huey.db")}
    rates: dict[str, list[float]] = {name: [] for name in adders}
    i = 0
    for _ in range(ROUNDS):
        for name, add in adders.items():
            started = time.perf_counter()
            for _ in range(n // ROUNDS):
                i += 1
                add(i)
            rates[name].append((n // ROUNDS) / (time.perf_counter() - started))
    return {name: sorted(values)[len(values) // 2] for name, values in rates.items()}


def _worker(path: Path, address: str, out: int) -> None:
    """A forked worker: wait for a datagram, claim what is due, write ``start - due`` per row."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.setblocking(False)
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA synchronous = NORMAL")
    claim = (
        "UPDATE t SET status = 'running' WHERE rowid IN (SELECT rowid FROM t "
        "WHERE status = 'queued' ORDER BY status, due LIMIT 10) RETURNING due"
    )
    while True:
        select.select([listener], [], [])
        try:
            while listener.recv(64) != b"stop":
                pass
        except BlockingIOError:
            pass
        else:
            return
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(claim).fetchall()
        db.execute("COMMIT")
        for (due,) in rows:
            os.write(out, b"%.6f\n" % (time.time() - due))


def add_to_start(tmp: Path, n: int) -> dict[str, Any]:
    """Start minus due of ``n`` raw adds, one every ``INTERVAL`` s, percentiles in ms."""
    path = tmp / "floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, status TEXT, due REAL, data TEXT)")
    db.execute("CREATE INDEX t_order ON t (status, due, id)")
    readable, writable = os.pipe()
    addresses = [str(tmp / f"w{k}.sock") for k in range(WORKERS)]
    children = []
    for address in addresses:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(readable)
                _worker(path, address, writable)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(writable)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + 10.0
        while not all(os.path.exists(a) for a in addresses) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        for i in range(n):
            due = time.time()
            row = (f"{i:024x}", due, f'{{"i":{i}}}')
            db.execute("INSERT INTO t VALUES (?, 'queued', ?, ?)", row)
            for address in addresses:
                sender.sendto(b"!", address)
            time.sleep(INTERVAL)
        time.sleep(0.5)
    finally:
        for address in addresses:
            try:
                sender.sendto(b"stop", address)
            except OSError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        sender.close()
        db.close()
    with os.fdopen(readable, "rb") as pipe:
        late = [float(line) * 1000.0 for line in pipe.read().split()]
    summary = {f"{k}_ms": v for k, v in harness.percentiles(late).items()}
    summary.update(n=n, received=len(late))
    return summary


def run(quick: bool, runs: int) -> dict[str, Any]:
    """``runs`` runs of both floors, each in a fresh folder."""
    commits = QUICK_COMMITS if quick else COMMITS
    adds = QUICK_ADDS if quick else ADDS
    rates: dict[str, list[float]] = {"party": [], "huey": []}
    starts: list[dict[str, Any]] = []
    errors = []
    for k in range(runs):
        with harness.workdir() as tmp:
            for name, rate in durable_commits(tmp, commits).items():
                rates[name].append(rate)
            starts.append(add_to_start(tmp, adds))
        harness.progress(
            f"floors run {k + 1}/{runs}: durable commits {rates['party'][-1]:,.0f}/s into "
            f"Party's schema, {rates['huey'][-1]:,.0f}/s into Huey's; add to start p50 "
            f"{starts[-1]['p50_ms']:.2f} ms, p99 {starts[-1]['p99_ms']:.2f} ms"
        )
        if starts[-1]["received"] < adds:
            errors.append(f"add to start: only {starts[-1]['received']} of {adds} rows claimed")
    figures = [
        harness.figure(SECTION, "durable commits, Party's schema", rates["party"], "/s"),
        harness.figure(SECTION, "durable commits, Huey's schema", rates["huey"], "/s"),
    ]
    for q in ("p50", "p99"):
        figures.append(
            harness.figure(
                SECTION,
                f"raw add to start {q}",
                [s[f"{q}_ms"] for s in starts],
                "ms",
                higher_is_better=False,
            )
        )
    return {"figures": figures, "errors": errors, "runs_detail": {"rates": rates, "starts": starts}}
