"""The sync of an SQLite store's write-ahead log: how a durable store makes a commit survive a
power cut, with one ``fdatasync`` shared by the commits made while the previous one ran.

SQLite runs with ``synchronous = NORMAL`` (in WAL mode a commit is written to the log, not yet
synced); a durable store then calls ``LogSync.sync`` before the write returns. That is the
guarantee of SQLite's FULL, with two gains: the sync runs outside the connection's lock, so the
threads that commit meanwhile are covered by the next sync (group commit), and an add can wake the
workers before its sync, so a task starts while its add is being made durable. Because the log is
one file whose frames are checked in sequence when it is replayed, a later commit can never
survive a power cut without the earlier ones. Standard library only.
"""

from __future__ import annotations

import os
import threading
import time

#: Seconds between two checks that the descriptor still names the store's log.
RECHECK = 1.0


class LogSync:
    """The syncs of the log of the SQLite file ``path`` by one connection.

    The connection calls ``committed`` after each write transaction (under its own lock, in
    commit order) and ``sync`` before the write returns to its caller. ``sync`` raises the
    ``OSError`` of a refused sync.
    """

    def __init__(self, path: str) -> None:
        self.path = path + "-wal"
        self._commits = 0  # write transactions of the connection, in commit order
        self._synced = 0  # the last of them the log is known to be synced through
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._checked = 0.0

    def committed(self) -> None:
        """One more write transaction was committed (called under the connection's lock)."""
        self._commits += 1

    def sync(self) -> None:
        """Return once the log is on disk through every commit counted so far."""
        upto = self._commits
        with self._lock:
            if self._synced >= upto:
                return  # a sync that started after that commit covered it
            through = self._commits
            fd = self._log_fd()
            if fd is not None:
                os.fdatasync(fd)
            self._synced = through

    def close(self) -> None:
        """Close the log's descriptor, once a sync in progress has ended."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _log_fd(self) -> int | None:
        """The log's descriptor, opened on first use; None when there is no log (every commit was
        checkpointed into the database file, which SQLite syncs after a checkpoint).

        SQLite deletes the log only when its last connection closes, never while this one is
        open; a log deleted by hand is noticed within ``RECHECK`` seconds and opened again. Not
        at every sync: a system call between the commit and the sync costs about 10 us.
        """
        fd = self._fd
        if fd is not None:
            now = time.monotonic()
            if now < self._checked + RECHECK:
                return fd
            self._checked = now
            if os.fstat(fd).st_nlink:
                return fd
            os.close(fd)
            self._fd = None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._checked = time.monotonic()
        return self._fd
