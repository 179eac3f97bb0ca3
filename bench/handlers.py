"""Handlers the benchmark loads through ``--tasks bench/handlers.py``.

``BenchNoop`` does nothing (the drain, scale and force-run figures). ``BenchStamp`` records
``time.time()`` at the very start of ``run()`` with its data, one line ``i due start`` appended to
the file named in ``data["file"]`` (else ``$BENCH_STAMP_FILE``), as the peer bench's
``taskfns.stamp`` does, for the start-latency figures.
"""

from __future__ import annotations

import os
import time

from party import TaskBase

_fds: dict[tuple[int, str], int] = {}


def _fd(path: str) -> int:
    key = (os.getpid(), path)  # one descriptor per process: workers are forked
    fd = _fds.get(key)
    if fd is None:
        fd = _fds[key] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return fd


class BenchNoop(TaskBase):
    """A task that does nothing."""

    def run(self) -> None:
        return None


class BenchStamp(TaskBase):
    """Append ``i due start`` (``start`` = time.time() when run() began) to the stamp file."""

    def run(self) -> None:
        start = time.time()
        path = self.data.get("file") or os.environ.get("BENCH_STAMP_FILE", "/dev/null")
        line = b"%d %.6f %.6f\n" % (self.data.get("i", -1), self.data.get("due", 0.0), start)
        os.write(_fd(path), line)


#: Seconds a waiting task waits on "I/O" (the peer bench's W6: an HTTP call, an e-mail to a relay).
IO_S = float(os.environ.get("BENCH_IO_S", "0.02"))


class BenchWait(TaskBase):
    """Wait ``IO_S`` as a blocking call would (runs in a worker's threads with --concurrency)."""

    def run(self) -> None:
        time.sleep(IO_S)


class BenchWaitAsync(TaskBase):
    """The same wait, awaited (runs on a worker's event loop)."""

    async def run(self) -> None:
        import asyncio

        await asyncio.sleep(IO_S)
