"""What every benchmark section shares: processes, addresses, figures and percentiles.

Starts ``python -m party serve``, ``python scheduler/`` and ``bench/bare_tornado.py`` as a user
would (the repo's own interpreter, from the repo root, each in its own process group, on a store in
a temporary folder), waits for ``/health``, and stops them with the whole process group. Reads CPU
time from ``/proc`` (no psutil). Builds figures (median, min and max of the runs, with a target and
whether it is met) and percentiles. Imports only the standard library and, for direct inserts,
``party``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HANDLERS = str(BENCH / "handlers.py")
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
_T0 = time.monotonic()

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def progress(message: str) -> None:
    """One progress line, with the seconds since the run started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


# -- figures --------------------------------------------------------------------------------------


def pct(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99, min, max and mean of ``values`` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return dict.fromkeys(("p50", "p95", "p99", "min", "max", "mean"))
    return {
        "p50": pct(ordered, 0.50),
        "p95": pct(ordered, 0.95),
        "p99": pct(ordered, 0.99),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def figure(
    section: str,
    name: str,
    runs: Sequence[float],
    unit: str,
    *,
    target: float | None = None,
    higher_is_better: bool = True,
    target_text: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One figure: the median of ``runs`` with min and max, beside its target when it has one."""
    values = [float(v) for v in runs if v is not None]
    median = statistics.median(values) if values else None
    ok = None
    if target is not None and median is not None:
        ok = median >= target if higher_is_better else median <= target
    if target_text is None and target is not None:
        target_text = f"{'>=' if higher_is_better else '<='} {fmt(target)}"
    return {
        "section": section,
        "name": name,
        "unit": unit,
        "median": median,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": values,
        "target": target_text,
        "ok": ok,
        **extra,
    }


def fmt(value: float | None) -> str:
    """A number for the table: thousands separators for big values, 3 digits for small ones."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if magnitude else "0"


# -- places and processes -------------------------------------------------------------------------


@contextmanager
def workdir(prefix: str = "party-bench-") -> Iterator[Path]:
    """A temporary folder removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def store_url(path: Path) -> str:
    """The ``sqlite:////absolute/path.db`` URL of a store file; ``PARTY_BENCH_SYNCHRONOUS=normal``
    in the environment measures the store with that option (the default is the store's, FULL)."""
    url = "sqlite:///" + str(Path(path).resolve())
    synchronous = os.environ.get("PARTY_BENCH_SYNCHRONOUS")
    return f"{url}?synchronous={synchronous}" if synchronous else url


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    """A started process, leader of its own process group; ``address`` is where it answers."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The leader's process id (also the process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the leader runs."""
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the whole group, wait up to ``grace`` s, then SIGKILL what is left."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # stragglers: workers of a dead leader
        except ProcessLookupError:
            pass
        return self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        """The end of the process's log (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``argv`` from the repo root in its own session, output to ``tmp/<name>.log``."""
    log = tmp / f"{name}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    environment.update(env or {})
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def start_server(
    tmp: Path, store: str, *, unix: bool = False, log_level: str = "WARNING", name: str = "server"
) -> Proc:
    """``python -m party serve`` on ``store`` with the bench handlers; waits for ``/health``."""
    argv = [PYTHON, "-m", "party", "serve", "--store", store, "--tasks", HANDLERS]
    argv += ["--log-level", log_level]
    address = _listen_args(argv, tmp, unix, name)
    proc = start(name, argv, tmp)
    proc.address = address
    wait_health(proc)
    return proc


def start_bare(tmp: Path, *, unix: bool = False, name: str = "bare") -> Proc:
    """``bench/bare_tornado.py`` with the same listen options; waits for ``/health``."""
    argv = [PYTHON, str(BENCH / "bare_tornado.py")]
    address = _listen_args(argv, tmp, unix, name)
    proc = start(name, argv, tmp)
    proc.address = address
    wait_health(proc)
    return proc


def _listen_args(argv: list[str], tmp: Path, unix: bool, name: str) -> str:
    if unix:
        path = str(tmp / f"{name}.sock")
        argv += ["--socket", path]
        return path
    port = free_port()
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    return f"127.0.0.1:{port}"


def start_scheduler(
    tmp: Path,
    store: str,
    *,
    workers: int = 2,
    log_level: str = "WARNING",
    extra: Sequence[str] = (),
    script: Sequence[str] | None = None,
    name: str = "scheduler",
) -> Proc:
    """``python scheduler/ --workers N --log-level WARNING`` on ``store`` with the bench handlers.

    ``script`` replaces ``scheduler/`` (the profiling launcher uses it).
    """
    argv = [PYTHON, *(script or ["scheduler/"]), "--store", store, "--tasks", HANDLERS]
    argv += ["--workers", str(workers), "--log-level", log_level, *extra]
    return start(name, argv, tmp)


def connect(address: str, timeout: float = 60.0) -> http.client.HTTPConnection:
    """A keep-alive connection to ``address`` (``host:port`` or a Unix socket path)."""
    if address.startswith("/"):
        from party.client import UnixHTTPConnection

        return UnixHTTPConnection(address, timeout=timeout)
    host, port = address.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


JSON_HEADERS = {"Content-Type": "application/json"}


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request on a kept-alive connection; returns (status, body)."""
    conn.request(method, path, body=body, headers=JSON_HEADERS)
    response = conn.getresponse()
    return response.status, response.read()


def call_json(address: str, method: str, path: str, value: Any = None) -> tuple[int, Any]:
    """One request on a fresh connection with a JSON body; returns (status, decoded answer)."""
    conn = connect(address)
    try:
        body = None if value is None else json.dumps(value).encode()
        status, data = call(conn, method, path, body)
    finally:
        conn.close()
    return status, json.loads(data) if data else None


def wait_health(proc: Proc, timeout: float = 30.0) -> None:
    """Wait until ``proc`` answers ``GET /health`` with 200; RuntimeError with its log if not."""
    assert proc.address is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        try:
            if call_json(proc.address, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    proc.stop()
    raise RuntimeError(f"{proc.name} did not answer /health:\n{proc.tail()}")


# -- CPU time from /proc --------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all threads (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def tree_cpu(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of every process in the trees rooted at ``pids``."""
    return {p: cpu_seconds(p) for root in pids for p in process_tree(root)}


# -- the machine ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python, SQLite and Tornado versions, kernel."""
    import platform
    import sqlite3

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import tornado

        tornado_version = tornado.version
    except ImportError:
        tornado_version = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "tornado": tornado_version,
        "kernel": platform.release(),
    }


# -- filling a store directly ---------------------------------------------------------------------


def fill_queue(path: Path, n: int, party: str = "BenchNoop", batch: int = 1000) -> float:
    """Add ``n`` due tasks with ``TaskQueue.add`` in batches; return the seconds it took."""
    from party.queue import TaskQueue
    from party.registry import discover
    from party.stores.sqlite import SqliteStore

    store = SqliteStore(path)
    queue = TaskQueue(store, discover([HANDLERS]))
    started = time.perf_counter()
    try:
        for first in range(0, n, batch):
            count = min(batch, n - first)
            queue.add([{"party": party, "data": {"i": first + k}} for k in range(count)])
    finally:
        store.close()
    return time.perf_counter() - started


@contextmanager
def open_local(store: str) -> Iterator[Any]:
    """``party.open(store)`` with the bench handlers (``PARTY_TASKS``), closed at the end: the
    in-process add an application beside the store uses instead of HTTP."""
    import party

    before = os.environ.get("PARTY_TASKS")
    os.environ["PARTY_TASKS"] = HANDLERS
    try:
        queue = party.open(store)
    finally:
        if before is None:
            del os.environ["PARTY_TASKS"]
        else:
            os.environ["PARTY_TASKS"] = before
    try:
        yield queue
    finally:
        queue.close()


def copy_store(src: Path, dst: Path) -> None:
    """Copy a closed store file (its WAL checkpointed on close) to ``dst``."""
    for suffix in ("-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)
