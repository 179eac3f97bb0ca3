"""The SQLite store's file: one process's connection to it, and what keeps it safe to share.

``SqliteFile`` opens (and creates, owner and group only) the file, switches it to WAL and migrates
its schema once under the writers' lock, serializes the connection's use and queues writers on an
``flock`` of a lock file beside it, runs the checkpoints outside that lock, makes a durable
store's writes durable (``sqlite_log``), checks that the store takes a write and describes the
file (in the words of ``sqlite_health``), and carries its wake-up channel: the half of ``Store``
that is about the file, not the tasks (``SqliteStore`` in ``sqlite`` adds those). Imports only the
standard library, ``errors``, ``stores.base``, ``stores.wakeup``, ``sqlite_log``,
``sqlite_health`` and ``sqlite_schema``: never ``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, StoreBusy, StoreUnavailable
from .base import Finding, Store
from .sqlite_health import check_file, findings, open_to_watch, unlinked, unwritable_reason
from .sqlite_log import LogSync
from .sqlite_schema import (
    FILE_MODE,
    SYNCHRONOUS,
    _create_private,
    is_prepared,
    migrate,
    missing_columns,
)
from .wakeup import Listener, Notifier, channel_dir, listener_or_none

# The logger of the store as a whole (its name from before the file had a module of its own).
logger = logging.getLogger("party.stores.sqlite")

#: Write transactions of one connection between two checkpoints it runs itself: the net for a
#: store no scheduler maintains (a scheduler checkpoints far more often, see ``maintain``).
CHECKPOINT_EVERY_WRITES = 1000
#: Seconds between the checkpoints ``maintain`` runs.
CHECKPOINT_INTERVAL = 0.2
#: Seconds ``check_writable`` waits for the writers' lock before it calls the store unwritable.
WRITABLE_WAIT = 1.0


def _flock_until(fd: int, deadline: float) -> bool:
    """Take the writers' lock, waiting until ``deadline`` (monotonic) at most."""
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)


def _open_lock_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


class SqliteFile(Store):
    """One connection to one SQLite file (``path``), shared safely by any number of processes.

    One connection per instance, guarded by a lock so a server may call it from a thread pool. Open
    a new instance in each process after a fork. Abstract: ``SqliteStore`` is the store.
    """

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 30.0, synchronous: str = "full"
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ConfigError(
                f"SQLite option synchronous={synchronous!r} is not understood; "
                f"accepted: {', '.join(SYNCHRONOUS)}"
            )
        self.path = str(path)
        self.synchronous = synchronous
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
        self._lock = threading.Lock()
        self._wait = threading.local()  # this thread's lock_wait, if any
        self._busy_timeout = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)
        self._writer_fd = None if self.path == ":memory:" else _open_lock_file(self.path + ".lock")
        # The database file as opened: a write first checks that it still has a name, so that a
        # file deleted or replaced under a running Party refuses writes instead of taking them
        # into an unlinked file, acknowledged and lost (one fstat per write transaction).
        self._file_fd = None if self.path == ":memory:" else open_to_watch(self.path)
        self._wake_dir = channel_dir(
            "sqlite:" + os.path.realpath(self.path),
            None if self.path == ":memory:" else os.stat(self.path).st_uid,
        )
        self._notifier: Notifier | None = None
        self._listened = False  # whether the last wake-up reached a listener
        try:
            self._db = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,  # autocommit; write transactions are explicit BEGIN IMMEDIATE
                check_same_thread=False,
                cached_statements=256,
            )
            # SQLite commits without waiting for the disk (NORMAL: in WAL mode no commit is lost
            # when a process dies, only the last few when the machine does); a durable store
            # ("full", the default) syncs the log before a write returns (``sqlite_log``).
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._log = (
                LogSync(self.path) if synchronous == "full" and self.path != ":memory:" else None
            )
            self._db.execute("PRAGMA foreign_keys = OFF")
            # A statement that may change several rows inside BEGIN ... COMMIT (the capped claim,
            # a write_many of several statements, prune) keeps a statement journal to undo itself
            # alone; as a temp file's buffer it made a capped claim of 4 in a store of 20,000
            # tasks 270 us instead of 115.
            self._db.execute("PRAGMA temp_store = MEMORY")
            # SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 pages of
            # log, 5-10 ms during which this process holds the writers' lock and every other
            # add, claim and completion waits. Checkpoints run outside that lock instead: from
            # the scheduler's ``maintain``, and every CHECKPOINT_EVERY_WRITES writes as a net.
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            self._writes = 0
            self._checkpointed = 0.0
            self._max_params = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._prepare()
        except BaseException as exc:
            if hasattr(self, "_db"):
                self._db.close()
            self._close_lock_file()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
            raise

    def _prepare(self) -> None:
        """Switch the file to WAL and create or migrate the schema, once, whoever opens it first.

        Both need SQLite's exclusive or write lock, and switching to WAL does not wait for it
        (it answers "database is locked" at once): so they are done holding the writers' lock
        file, and retried within the busy timeout against writers that do not take that lock.
        An up-to-date file needs neither and takes no lock at all.
        """
        db = self._db
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                if is_prepared(db, self.path):
                    return
                if self._writer_fd is not None and not _flock_until(self._writer_fd, deadline):
                    raise StoreUnavailable(
                        f"cannot open SQLite store {self.path!r}: the write lock was not had "
                        f"within {self._busy_timeout:g} s"
                    )
                try:
                    if not is_prepared(db, self.path):
                        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                            raise StoreUnavailable(
                                f"cannot open SQLite store {self.path!r}: WAL mode refused"
                            )
                        with self._transaction():
                            migrate(db, self.path)
                    return
                finally:
                    if self._writer_fd is not None:
                        fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _close_lock_file(self) -> None:  # and the descriptor that watches the file
        if self._writer_fd is not None:
            os.close(self._writer_fd)
            self._writer_fd = None
        if getattr(self, "_file_fd", None) is not None:
            os.close(self._file_fd)  # type: ignore[arg-type]
            self._file_fd = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, locked at once (BEGIN IMMEDIATE): it cannot deadlock."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _guard(self, *, write: bool = False, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """Serialize use of the connection; for a write, also queue behind other writers, and in
        a durable store sync the log once the block ends (``sync=False``: the caller calls
        ``_sync_log`` itself before it answers, after waking the workers).

        SQLite's own busy handler sleeps 1 ms, then 2, 5, 10... between tries, which would put
        milliseconds into every contended claim and completion. Writers of Party processes wait
        on an ``flock`` of a lock file beside the store instead: the kernel wakes the next one the
        moment the lock is released. The busy timeout stays as the net for other writers.
        """
        wait: float | None = getattr(self._wait, "seconds", None)
        with self._lock if wait is None else self._locked_within(wait):
            locked = write and self._writer_fd is not None
            if locked:
                if wait is None:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
                elif not _flock_until(self._writer_fd, self._wait.deadline):
                    raise StoreBusy(
                        f"SQLite store {self.path!r}: the write lock was not had within "
                        f"{wait:g} s (another process holds it: a stopped or stalled scheduler, "
                        "worker or server?)"
                    )
            # A write that changed no row (an empty claim or recovery pass) has nothing to sync.
            changes = self._db.total_changes if locked else 0
            try:
                if locked:
                    self._check_still_named(f"SQLite store {self.path!r}")
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
            finally:
                if locked:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
            if locked:
                if self._log is not None and self._db.total_changes != changes:
                    self._log.committed()
                self._writes += 1
                if self._writes >= CHECKPOINT_EVERY_WRITES:
                    self._checkpoint()
        if write and sync:
            self._sync_log()

    def _check_still_named(self, where: str) -> None:
        """Raise ``StoreUnavailable`` when the open file no longer has a name (deleted, or
        replaced by another file at its path): a write would go into a file nobody will read."""
        if unlinked(self._file_fd):
            raise StoreUnavailable(
                f"{where}: its file was deleted or replaced while open, so nothing is written; "
                "restore it, or restart the server and the scheduler on the file now at that path"
            )

    def _sync_log(self) -> None:
        """Return once the log is on disk through this connection's last commit (a durable
        store; else at once). Raises ``StoreUnavailable`` when the disk refuses the sync: the
        write is in the log, other processes may already see it, but it is not known to survive
        a power cut."""
        log = self._log
        if log is None:
            return
        try:
            log.sync()
        except OSError as exc:
            raise StoreUnavailable(
                f"SQLite store {self.path!r}: a write was committed but its log could not be "
                f"synced to disk ({exc}); it may not survive a power cut"
            ) from exc

    @property
    def durable(self) -> bool:
        """Whether a write returns only once it is on disk (``synchronous=full``, the default;
        ``relax_commits`` and ``?synchronous=normal`` turn it off)."""
        return self._log is not None

    @property
    def inline_writes(self) -> bool:  # type: ignore[override]
        # A durable write waits for the disk: never on a server's event loop.
        return not self.durable

    def relax_commits(self) -> None:
        # The next durable write (an add's) syncs the whole log, this connection's frames with
        # it: durability stays with the adds, and the workers skip a sync apiece.
        log, self._log = self._log, None
        if log is not None:
            log.close()

    @contextmanager
    def lock_wait(self, seconds: float) -> Iterator[None]:
        wait = self._wait
        previous = getattr(wait, "seconds", None), getattr(wait, "deadline", None)
        wait.seconds, wait.deadline = seconds, time.monotonic() + seconds
        try:
            yield
        finally:
            wait.seconds, wait.deadline = previous

    @contextmanager
    def _locked_within(self, wait: float) -> Iterator[None]:
        """Hold the connection's lock, had within the ``lock_wait`` of ``wait`` seconds."""
        if not self._lock.acquire(timeout=max(0.0, self._wait.deadline - time.monotonic())):
            raise StoreBusy(
                f"SQLite store {self.path!r}: its connection in this process stayed busy for "
                f"over {wait:g} s"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _checkpoint(self) -> None:
        """A passive checkpoint, with the connection held but not the writers' lock: it copies
        what it can of the log into the database file while other processes go on writing."""
        self._writes = 0
        self._checkpointed = time.monotonic()
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            logger.warning("SQLite store %r: checkpoint failed: %s", self.path, exc)

    def maintain(self) -> None:
        if time.monotonic() - self._checkpointed >= CHECKPOINT_INTERVAL:
            with self._lock:
                self._checkpoint()

    def ping(self) -> None:
        with self._guard() as db:
            db.execute("SELECT 1").fetchone()

    def check_writable(self) -> None:
        """Commit a rewrite of the one ``health`` row, having waited at most ``WRITABLE_WAIT``
        for the connection, the writers' lock and SQLite's own lock; also call the store full
        when its file system has less than ``MIN_FREE_BYTES`` free (a commit can still fit in a
        log file grown earlier)."""
        deadline = time.monotonic() + WRITABLE_WAIT
        where = f"SQLite store {self.path!r} cannot take a write"
        if not self._lock.acquire(timeout=WRITABLE_WAIT):
            raise StoreUnavailable(f"{where}: this process's connection is busy for over a second")
        try:
            check_file(self.path, where)
            self._check_still_named(where)
            if self._writer_fd is not None and not _flock_until(self._writer_fd, deadline):
                raise StoreUnavailable(
                    f"{where}: the write lock was not had within a second (another process "
                    "holds it: a stopped or stalled scheduler, worker or server?)"
                )
            try:
                left = max(1, int((deadline - time.monotonic()) * 1000))
                self._db.execute(f"PRAGMA busy_timeout = {left}")
                try:
                    self._db.execute(
                        "INSERT OR REPLACE INTO health (id, checked) VALUES (1, ?)",
                        (time.time_ns() // 1000,),
                    )
                    if self._log is not None:
                        self._log.committed()
                finally:
                    self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"{where}: {unwritable_reason(exc)} ({exc})") from exc
            finally:
                if self._writer_fd is not None:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()
        self._sync_log()  # and the disk syncs it (a durable store)

    def listen(self) -> Listener | None:
        return listener_or_none(self._wake_dir)

    def notify(self) -> None:
        if self._notifier is None:
            self._notifier = Notifier(self._wake_dir)
        self._listened = self._notifier.notify() > 0

    def _notify_and_sync(self) -> None:
        """After an add: wake the listeners and sync the log (a durable store). Listeners first
        when the last wake-up reached any, so that a worker starts the task during the sync;
        else the sync first, since a system call between a commit and its sync costs it about
        10 us (a scheduler that started since is woken after the sync, this once)."""
        if self._listened:
            self.notify()
            self._sync_log()
        else:
            self._sync_log()
            self.notify()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._close_lock_file()
            if self._log is not None:
                self._log.close()
            if self._notifier is not None:
                self._notifier.close()

    def describe(self) -> list[Finding]:
        """The file, its journal mode, synchronous setting, schema version and size
        (``sqlite_health.findings``)."""
        with self._guard() as db:
            journal = db.execute("PRAGMA journal_mode").fetchone()[0]
            # SQLite commits with NORMAL; a durable store syncs the log itself (``_sync_log``).
            synchronous = 2 if self.durable else db.execute("PRAGMA synchronous").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            missing = missing_columns(db)
        return findings(self.path, journal, synchronous, version, bool(missing))
