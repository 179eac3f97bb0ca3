"""SqliteStore: the embedded, zero set-up store on one SQLite file, safe for several processes.

WAL lets readers run beside the one writer; a busy timeout makes writers queue instead of failing;
every claim is one ``UPDATE ... WHERE id IN (SELECT ... ORDER BY ... LIMIT n) RETURNING`` statement,
so it is atomic across processes, and the fenced writes of a batch that set the same fields (the
completions of a worker's runs) are one ``UPDATE ... FROM (VALUES ...) RETURNING``. Times are
stored as integer microseconds since the epoch (UTC).
Imports only the standard library, ``model``, ``errors``, ``timestamps`` and ``stores.base``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from ..errors import ConfigError, StoreBusy, StoreUnavailable
from ..model import (
    TASK_FIELDS,
    FieldSpec,
    Kind,
    Status,
    Task,
    Write,
    compile_function,
    task_from_micros,
)
from ..timestamps import from_micros, to_micros
from .base import (
    PRUNABLE,
    Finding,
    KeyedAdd,
    KeyRecord,
    KeyTaken,
    OrderKey,
    Store,
    assemble_stats,
    check_batch_singletons,
    singleton_conflict,
)
from .wakeup import Listener, Notifier, channel_dir, listener_or_none

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5

SCHEMA = """
{tasks_table}
-- Serves the due-task claim (status = 'queued', timestamp <= now) in queue order, and listings
-- filtered by status, without a sort.
CREATE INDEX IF NOT EXISTS tasks_order ON tasks (status, timestamp, attempts, created, id);
-- The next time a queued task becomes due (the scheduler's sleep target).
CREATE INDEX IF NOT EXISTS tasks_run_at ON tasks (run_at) WHERE status = 'queued';
-- Expired leases are found through tasks_order (status = 'running'): running tasks are few, so
-- an index of their own would only cost an update on every claim and completion.
DROP INDEX IF EXISTS tasks_lease;
-- At most one live recurring task per (party, data). Only live recurring tasks hold a key, so the
-- index is partial: the other tasks' NULLs cost no entry on insert. It replaces tasks_singleton,
-- which indexed the NULLs too: dropping that one migrates files made before.
DROP INDEX IF EXISTS tasks_singleton;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_live_singleton ON tasks (singleton)
    WHERE singleton IS NOT NULL;
-- Retention (prune): the ended tasks by the time they ended. Partial, so queued and running
-- tasks cost no entry; a task gains one when it ends. Replaces nothing: new in version 5.
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (status, coalesce(completed_on, created))
    WHERE status IN ('completed', 'failed', 'deleted');
-- Counters that outlive the tasks they count: 'pruned' (tasks removed by retention).
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('pruned', 0);
-- Adds under an Idempotency-Key: the key (unique), the digest of the request, when, and the
-- answer kept for repeats; written in the transaction of the add's tasks.
CREATE TABLE IF NOT EXISTS idempotency (
    key     TEXT PRIMARY KEY,
    digest  TEXT NOT NULL,
    created INTEGER NOT NULL,
    answer  BLOB
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
-- Schedulers' heartbeats (beat, schedulers): one JSON record each, by scheduler id.
CREATE TABLE IF NOT EXISTS schedulers (
    id        TEXT PRIMARY KEY,
    heartbeat INTEGER NOT NULL,
    record    TEXT NOT NULL
);
-- One row that check_writable rewrites: the proof that the store takes a write.
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), checked INTEGER);
-- Tasks per (party, status), kept by the triggers below so that stats() reads a few rows instead
-- of counting the table. Filled from the tasks once, when the file is migrated to it.
CREATE TABLE IF NOT EXISTS counts (
    party  TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (party, status)
) WITHOUT ROWID;
DELETE FROM counts;
INSERT INTO counts (party, status, n) SELECT party, status, COUNT(*) FROM tasks GROUP BY 1, 2;
CREATE TRIGGER IF NOT EXISTS counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO counts (party, status, n) VALUES (NEW.party, NEW.status, 1)
        ON CONFLICT (party, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE counts SET n = n - 1 WHERE party = OLD.party AND status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS counts_update AFTER UPDATE OF party, status ON tasks
WHEN OLD.status IS NOT NEW.status OR OLD.party IS NOT NEW.party BEGIN
    UPDATE counts SET n = n - 1 WHERE party = OLD.party AND status = OLD.status;
    INSERT INTO counts (party, status, n) VALUES (NEW.party, NEW.status, 1)
        ON CONFLICT (party, status) DO UPDATE SET n = n + 1;
END;
"""

# Column types of the field kinds: times are integer microseconds since the epoch (UTC), JSON is
# its text, a bool 0 or 1.
_COLUMN_TYPES = {
    Kind.ID: "TEXT", Kind.TEXT: "TEXT", Kind.STATUS: "TEXT", Kind.JSON: "TEXT",
    Kind.INT: "INTEGER", Kind.BOOL: "INTEGER", Kind.TIME: "INTEGER",
}  # fmt: skip


def _sql_literal(value: Any) -> str:
    """A field's default written into SQL: Party's own constants, never user input."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + str(value).replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a default of {value!r}")


def _column(spec: FieldSpec) -> str:
    """The definition of the column of ``spec`` (in CREATE TABLE and ADD COLUMN)."""
    sql = f"{spec.name} {_COLUMN_TYPES[spec.kind]}"
    if spec.kind == Kind.ID:
        return sql + " PRIMARY KEY"
    if not spec.nullable:
        sql += " NOT NULL"
    if not spec.required and spec.default is not None:
        sql += " DEFAULT " + _sql_literal(spec.default)
    return sql


COLUMNS = tuple(spec.name for spec in TASK_FIELDS)
SCHEMA = SCHEMA.replace(
    "{tasks_table}",
    "CREATE TABLE IF NOT EXISTS tasks (\n    "
    + ",\n    ".join(_column(spec) for spec in TASK_FIELDS)
    + "\n);",
)
SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM tasks"
RETURNING = " RETURNING " + ", ".join(COLUMNS)
INSERT = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
ORDER = " ORDER BY timestamp, attempts, created, id"
# Left to itself the planner answers MIN(run_at) by scanning every queued row of tasks_order.
NEXT_RUN_AT = (
    "SELECT run_at FROM tasks INDEXED BY tasks_run_at WHERE status = 'queued' "
    "ORDER BY run_at LIMIT 1"
)

#: Index entries ``stats`` first counts on each side of ``now`` (see ``SqliteStore.stats``).
STATS_COUNT_CAP = 20_000
_DUE_CAPPED = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' AND timestamp <= ? "
    "AND run_at <= ? LIMIT ?)"
)
# Queued but not due: a timestamp ahead (the order index), or one passed with a retry delay ahead
# (the run_at index: retries are few).
_WAITING_CAPPED = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' AND timestamp > ? LIMIT ?)"
)
_DELAYED = (
    "SELECT COUNT(*) FROM tasks INDEXED BY tasks_run_at WHERE status = 'queued' AND run_at > ? "
    "AND timestamp <= ?"
)
_OLDEST_DUE = (
    "SELECT timestamp FROM tasks WHERE status = 'queued' AND timestamp <= ? AND run_at <= ? "
    "ORDER BY status, timestamp LIMIT 1"
)

# The WHERE of tasks_ended, written as its definition writes it: SQLite uses a partial index only
# for a query that repeats its condition.
_ENDED = "status IN ('completed', 'failed', 'deleted')"
_PRUNE = (
    "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks INDEXED BY tasks_ended WHERE "
    + _ENDED
    + " AND status IN ({statuses}) AND coalesce(completed_on, created) < ? LIMIT ?)"
)
_PRUNE_KEYS = (
    "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created < ? "
    "LIMIT ?)"
)

_EMPTY_OBJECT = "{}"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


# How a value of each kind becomes a column value (None stays NULL); kinds not named go as is.
_KIND_ENCODERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.TIME: to_micros,
    Kind.JSON: _dumps,
    Kind.BOOL: int,
    Kind.STATUS: str,  # a plain str: a Status would take sqlite3's slow adapter path
}
_ENCODERS = {
    spec.name: _KIND_ENCODERS[spec.kind] for spec in TASK_FIELDS if spec.kind in _KIND_ENCODERS
}


def _encode(name: str, value: Any) -> Any:
    if value is None:
        return None
    encode = _ENCODERS.get(name)
    return value if encode is None else encode(value)


def _row_decoder() -> Callable[[tuple[Any, ...]], Task]:
    """``_row_to_task(row)``, written out for the columns of ``TASK_FIELDS``: rows are decoded
    positionally, once per claimed task, so it is kept lean."""
    names = [f"c_{spec.name}" for spec in TASK_FIELDS]
    args = []
    for spec, var in zip(TASK_FIELDS, names, strict=True):
        if spec.kind == Kind.JSON:
            if spec.nullable:
                args.append(f"None if {var} is None else loads({var})")
            else:
                args.append(f"{{}} if {var} == '{{}}' else loads({var})")
        elif spec.kind == Kind.BOOL:
            args.append(
                f"None if {var} is None else bool({var})" if spec.nullable else f"bool({var})"
            )
        else:
            args.append(var)  # times stay integers and the status a str: task_from_micros decodes
    source = (
        "def _row_to_task(row):\n"
        f"    ({', '.join(names)},) = row\n"
        f"    return task_from_micros({', '.join(args)})\n"
    )
    namespace = {"task_from_micros": task_from_micros, "loads": json.loads}
    return compile_function("_row_to_task", source, namespace)  # type: ignore[no-any-return]


_row_to_task = _row_decoder()


# A fresh task (every field with a default holds it, as ``TaskQueue.add`` makes them) binds only its
# required columns: sqlite3 binds None, and a str subclass such as Status, through a slow adapter
# lookup, which cost a third of a batched insert. The defaults are written into the statement.
_FRESH = tuple(spec for spec in TASK_FIELDS if spec.required)
_DEFAULTED = tuple(spec for spec in TASK_FIELDS if not spec.required)
INSERT_FRESH = (
    "INSERT INTO tasks ("
    + ", ".join(spec.name for spec in _FRESH + _DEFAULTED if spec.default is not None)
    + ") VALUES ("
    + ", ".join(
        ["?"] * len(_FRESH)
        + [_sql_literal(spec.default) for spec in _DEFAULTED if spec.default is not None]
    )
    + ")"
)
_compact_dumps: Callable[[Any], str]
if json.encoder.c_make_encoder is None:  # pragma: no cover - CPython builds always have it
    _compact_dumps = _dumps
else:
    # Calling the C encoder directly skips what json.dumps sets up on every call (two objects),
    # most of its cost for a small object. No cycle check: the queue checked the data.
    _encode_chunks = json.encoder.c_make_encoder(
        None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
        ":", ",", False, False, True,
    )  # fmt: skip

    def _compact_dumps(value: Any) -> str:
        return "".join(_encode_chunks(value, 0))


class _Micros(dict[datetime, int]):
    """``to_micros`` memoised for one batch, whose tasks share their ``created`` time."""

    def __missing__(self, value: datetime) -> int:
        micros = self[value] = to_micros(value)
        return micros


def _row_encoder() -> Callable[[Task, _Micros], tuple[bool, tuple[Any, ...]]]:
    """``_task_to_row(task, micros)``, written out for ``TASK_FIELDS``: whether ``task`` is fresh,
    and its row, of ``INSERT_FRESH`` if it is, else of ``INSERT``."""
    checks = []
    namespace: dict[str, Any] = {"_encode_all": _encode_all}
    for spec in _DEFAULTED:
        if spec.default is None:
            checks.append(f"task.{spec.name} is None")
        else:
            namespace[f"d_{spec.name}"] = spec.default
            checks.append(f"task.{spec.name} == d_{spec.name}")
    values = []
    for spec in _FRESH:
        value = f"task.{spec.name}"
        if spec.kind == Kind.TIME:
            values.append(f"micros[{value}]")
        elif spec.kind == Kind.JSON:  # most data is an object, often empty
            values.append(f"(_dumps({value}) if {value} or type({value}) is not dict else '{{}}')")
        elif spec.kind == Kind.BOOL:
            values.append(f"(1 if {value} else 0)")
        elif spec.kind == Kind.STATUS:
            values.append(f"str({value})")
        else:
            values.append(value)
    source = (
        "def _task_to_row(task, micros):\n"
        f"    if {' and '.join(checks) or 'True'}:\n"
        f"        return True, ({', '.join(values)},)\n"
        "    return False, _encode_all(task)\n"
    )
    namespace["_dumps"] = _compact_dumps
    return compile_function("_task_to_row", source, namespace)  # type: ignore[no-any-return]


def _encode_all(task: Task) -> tuple[Any, ...]:
    return tuple(_encode(name, getattr(task, name)) for name in COLUMNS)


_task_to_row = _row_encoder()


# What a write sets, in its own order: the columns given values, the columns cleared, whether it is
# fenced by a lease, and the statuses it requires. Writes of one shape share one statement.
_Shape = tuple[tuple[str, ...], tuple[str, ...], bool, tuple[Status, ...] | None]

# A batch of writes of one shape is one statement of at most this many rows, padded up to a power
# of two: the statement cache then holds a few sizes per shape, not one per batch size.
_MAX_BATCH_ROWS = 64
#: Write transactions of one connection between two checkpoints it runs itself: the net for a
#: store no scheduler maintains (a scheduler checkpoints far more often, see ``maintain``).
CHECKPOINT_EVERY_WRITES = 1000
#: Seconds between the checkpoints ``maintain`` runs.
CHECKPOINT_INTERVAL = 0.2
#: Modes of PRAGMA synchronous a store URL may choose (``?synchronous=normal``).
SYNCHRONOUS = ("full", "normal")
#: The options of an ``sqlite:///`` URL and the values each accepts.
URL_OPTIONS = {"synchronous": SYNCHRONOUS}
#: Mode of the files of a store (the database, its -wal and -shm, the lock file), less the
#: umask: never readable by other users.
FILE_MODE = 0o660
#: Seconds ``check_writable`` waits for the writers' lock before it calls the store unwritable.
WRITABLE_WAIT = 1.0
#: Free bytes below which the file system of the store counts as full.
MIN_FREE_BYTES = 1 << 20

_HEADER = b"SQLite format 3\x00"

# What an SQLite error code means for a person, by its name's prefix (most specific first).
_UNWRITABLE_REASONS = (
    ("SQLITE_READONLY", "the store is read-only (a read-only file system or file)"),
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_CORRUPT", "the database file is corrupt"),
    ("SQLITE_NOTADB", "the file is not an SQLite database (corrupt?)"),
    ("SQLITE_BUSY", "the write lock was not had within a second"),
    ("SQLITE_LOCKED", "the write lock was not had within a second"),
    ("SQLITE_IOERR", "an I/O error (the disk failed, is full or went read-only)"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_PERM", "permission denied"),
)


def _shape(write: Write) -> _Shape:
    names: list[str] = []
    nulls: list[str] = []
    for name, value in write.fields.items():
        (nulls if value is None else names).append(name)
    statuses = write.statuses
    if statuses is not None and type(statuses) is not tuple:
        statuses = tuple(statuses)  # a key of the statement caches: hashable
    return tuple(names), tuple(nulls), write.lease is not None, statuses


def _guard_sql(statuses: tuple[Status, ...] | None) -> str:
    if statuses is None:  # Status values, never user input: safe to write into the SQL
        return ""
    return " AND tasks.status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


@lru_cache(maxsize=256)
def _update_statement(
    names: tuple[str, ...],
    nulls: tuple[str, ...],
    fenced: bool,
    statuses: tuple[Status, ...] | None,
) -> str:
    # None and str subclasses (Status) go through sqlite3's slow adapter lookup when bound, so
    # NULLs and statuses are written into the (cached) statement and only plain values bound.
    sets = [f"{name} = ?" for name in names] + [f"{name} = NULL" for name in nulls]
    sql = "UPDATE tasks SET " + ", ".join(sets) + " WHERE id = ?"
    if fenced:
        sql += " AND lease = ?"
    return sql + _guard_sql(statuses)


@lru_cache(maxsize=256)
def _batch_update_statement(
    names: tuple[str, ...],
    nulls: tuple[str, ...],
    fenced: bool,
    statuses: tuple[Status, ...] | None,
    rows: int,
) -> str:
    """One UPDATE applying ``rows`` writes of one shape, each with its own values; it returns the
    ids it matched. A row of ``v`` is (id, lease if fenced, the values of ``names``); its columns
    are numbered, as a written field may be called ``lease`` too."""
    columns = ["k", *(["f"] if fenced else []), *(f"c{i}" for i in range(len(names)))]
    row = "(" + ", ".join("?" * len(columns)) + ")"
    sets = [f"{name} = v.c{i}" for i, name in enumerate(names)]
    sets += [f"{name} = NULL" for name in nulls]
    sql = (
        f"WITH v({', '.join(columns)}) AS (VALUES {', '.join([row] * rows)}) "
        f"UPDATE tasks SET {', '.join(sets)} FROM v WHERE tasks.id = v.k"
    )
    if fenced:
        sql += " AND tasks.lease = v.f"
    return sql + _guard_sql(statuses) + " RETURNING tasks.id"


def _values(write: Write, names: tuple[str, ...]) -> list[Any]:
    fields = write.fields
    return [_encode(name, fields[name]) for name in names]


def _update_sql(write: Write, shape: _Shape | None = None) -> tuple[str, list[Any]]:
    shape = shape or _shape(write)
    params = _values(write, shape[0])
    params.append(write.task_id)
    if write.lease is not None:
        params.append(write.lease)
    return _update_statement(*shape), params


# A statement of write_many: its SQL and parameters, the indexes of the writes it applies, and
# whether it returns the ids it matched (a batch) or applies one write (then its rowcount says).
_Statement = tuple[str, list[Any], list[int], bool]


def _write_statements(writes: Sequence[Write], max_params: int) -> list[_Statement]:
    """The statements that apply ``writes``: one per write, or, when all are to distinct tasks,
    one per shape and chunk of up to ``_MAX_BATCH_ROWS`` writes (and ``max_params`` parameters).
    """
    shapes = [_shape(write) for write in writes]
    groups: dict[_Shape, list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    # Writes to one task must apply in turn, each seeing the other's result: not in one statement.
    if len(groups) == len(writes) or len({write.task_id for write in writes}) < len(writes):
        return [(*_update_sql(writes[i], shape), [i], False) for i, shape in enumerate(shapes)]
    statements: list[_Statement] = []
    for shape, indexes in groups.items():
        names, _, fenced, _ = shape
        width = 1 + fenced + len(names)
        most = max(1, min(_MAX_BATCH_ROWS, max_params // width))
        for start in range(0, len(indexes), most):
            chunk = indexes[start : start + most]
            if len(chunk) == 1:
                statements.append((*_update_sql(writes[chunk[0]], shape), chunk, False))
                continue
            params: list[Any] = []
            for index in chunk:
                write = writes[index]
                params.append(write.task_id)
                if fenced:
                    params.append(write.lease)
                params += _values(write, names)
            rows = 1 << (len(chunk) - 1).bit_length()  # the next power of two
            if rows > most:
                rows = len(chunk)
            # Padding repeats the last row: a task joined to two identical rows is written once.
            params += params[-width:] * (rows - len(chunk))
            statements.append((_batch_update_statement(*shape, rows), params, chunk, True))
    return statements


def _apply(
    db: sqlite3.Connection, statement: _Statement, writes: Sequence[Write], matched: list[bool]
) -> None:
    sql, params, indexes, batch = statement
    if batch:
        done = {row[0] for row in db.execute(sql, params).fetchall()}
        for index in indexes:
            matched[index] = writes[index].task_id in done
    else:
        matched[indexes[0]] = db.execute(sql, params).rowcount == 1


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


def _unwritable_reason(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, reason in _UNWRITABLE_REASONS:
        if name.startswith(prefix):
            return reason
    return "SQLite refused the write"


def _open_lock_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def _create_private(path: str) -> None:
    """Create the database file, if missing, readable by its owner and group only.

    SQLite would create it 0644 less the umask, world-readable as a rule; it gives its ``-wal``
    and ``-shm`` files the mode of the database file, so creating that one is enough.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script``, split where SQLite says one is complete (a trigger's body
    holds semicolons of its own)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement
            statement = ""


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """The file path and the ``SqliteStore`` options of an ``sqlite:///`` URL.

    Raises ``ConfigError`` naming an unknown option, or a value that is not accepted.
    """
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if name not in URL_OPTIONS:
            raise ConfigError(
                f"store URL option {name!r} is not understood; accepted: "
                + ", ".join(f"{key}={'|'.join(accepted)}" for key, accepted in URL_OPTIONS.items())
            )
        value = values[-1].lower()
        if value not in URL_OPTIONS[name]:
            raise ConfigError(
                f"store URL option {name}={values[-1]!r} is not understood; accepted: "
                + ", ".join(f"{name}={accepted}" for accepted in URL_OPTIONS[name])
            )
        options[name] = value
    return path, options


class SqliteStore(Store):
    """Tasks in one SQLite file (``path``), shared safely by any number of processes.

    One connection per instance, guarded by a lock so a server may call it from a thread pool. Open
    a new instance in each process after a fork.
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
        self._wake_dir = channel_dir(
            "sqlite:" + os.path.realpath(self.path),
            None if self.path == ":memory:" else os.stat(self.path).st_uid,
        )
        self._notifier: Notifier | None = None
        try:
            self._db = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,  # autocommit; write transactions are explicit BEGIN IMMEDIATE
                check_same_thread=False,
                cached_statements=256,
            )
            # FULL syncs the log at every commit, so an acknowledged add survives a power cut;
            # NORMAL (in WAL mode) loses no commit when a process dies, only the last few ones
            # when the machine does.
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._db.execute("PRAGMA foreign_keys = OFF")
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
                if self._is_prepared():
                    return
                if self._writer_fd is not None and not _flock_until(self._writer_fd, deadline):
                    raise StoreUnavailable(
                        f"cannot open SQLite store {self.path!r}: the write lock was not had "
                        f"within {self._busy_timeout:g} s"
                    )
                try:
                    if not self._is_prepared():
                        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                            raise StoreUnavailable(
                                f"cannot open SQLite store {self.path!r}: WAL mode refused"
                            )
                        with self._transaction():
                            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                                for statement in _statements(SCHEMA):
                                    db.execute(statement)
                                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                            self._add_missing_columns()
                    return
                finally:
                    if self._writer_fd is not None:
                        fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _is_prepared(self) -> bool:
        db = self._db
        if self.path != ":memory:" and db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return False
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            return False
        return not self._missing_columns()

    def _missing_columns(self) -> list[FieldSpec]:
        """The fields of ``TASK_FIELDS`` the file's tasks table has no column for (those declared
        after the file was made)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        return [spec for spec in TASK_FIELDS if spec.name not in present]

    def _add_missing_columns(self) -> None:
        """Give the tasks table a column for each field declared since the file was made: a new
        field only needs its line in ``model.Task``. Its stored tasks read its default."""
        for spec in self._missing_columns():
            if spec.required or (not spec.nullable and spec.default is None):
                raise StoreUnavailable(
                    f"cannot migrate SQLite store {self.path!r}: the new task field {spec.name!r} "
                    "has no default for the tasks already stored (give it one in party/model.py)"
                )
            self._db.execute(f"ALTER TABLE tasks ADD COLUMN {_column(spec)}")

    def _close_lock_file(self) -> None:
        if self._writer_fd is not None:
            os.close(self._writer_fd)
            self._writer_fd = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Open ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``, with options in a
        query string (``?synchronous=normal``); ``ConfigError`` names an unknown option."""
        path, options = parse_url(url)
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

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
    def _guard(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Serialize use of the connection; for a write, also queue behind other writers.

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
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
            finally:
                if locked:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
            if locked:
                self._writes += 1
                if self._writes >= CHECKPOINT_EVERY_WRITES:
                    self._checkpoint()

    @property
    def inline_writes(self) -> bool:  # type: ignore[override]
        # A durable commit waits for the disk: never on a server's event loop.
        return self.synchronous != "full"

    def relax_commits(self) -> None:
        # In WAL mode the next durable commit (an add's) syncs the whole log, this connection's
        # frames with it: durability stays with the adds, and the workers skip a sync apiece.
        if self.synchronous == "full":
            with self._guard():
                self._db.execute("PRAGMA synchronous = NORMAL")

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

    def insert_many(self, tasks: Sequence[Task], key: KeyedAdd | None = None) -> list[Task]:
        check_batch_singletons(tasks)
        micros = _Micros()
        fresh: list[tuple[Any, ...]] = []
        other: list[tuple[Any, ...]] = []
        for task in tasks:
            is_fresh, row = _task_to_row(task, micros)
            (fresh if is_fresh else other).append(row)
        with self._guard(write=True) as db:
            try:
                if key is not None:
                    # The key's record and the tasks commit together: a repeat finds both or
                    # neither, and of two adds racing with one key the unique key lets one in.
                    with self._transaction():
                        self._hold_key(db, key)
                        if fresh:
                            db.executemany(INSERT_FRESH, fresh)
                        if other:
                            db.executemany(INSERT, other)
                        db.execute(
                            "UPDATE idempotency SET answer = ? WHERE key = ?",
                            (key.answer(list(tasks)), key.key),
                        )
                elif len(tasks) == 1:
                    # One row is one statement, which in autocommit mode is its own transaction:
                    # it takes the write lock as it starts (as BEGIN IMMEDIATE does) and commits
                    # as it ends, without the round trips of two more statements.
                    db.execute(INSERT_FRESH if fresh else INSERT, (fresh or other)[0])
                else:
                    with self._transaction():
                        if fresh:
                            db.executemany(INSERT_FRESH, fresh)
                        if other:
                            db.executemany(INSERT, other)
            except sqlite3.IntegrityError:
                clash = self._first_singleton_clash(tasks)
                if clash is None:
                    raise
                raise singleton_conflict(tasks[clash], clash) from None
        self.notify()
        return list(tasks)

    def _hold_key(self, db: sqlite3.Connection, key: KeyedAdd) -> None:
        """Create the record of ``key`` in the open transaction (an expired one is replaced), or
        raise ``KeyTaken`` with the live record found."""
        db.execute(
            "DELETE FROM idempotency WHERE key = ? AND created < ?",
            (key.key, to_micros(key.expired_before)),
        )
        try:
            db.execute(
                "INSERT INTO idempotency (key, digest, created) VALUES (?, ?, ?)",
                (key.key, key.digest, to_micros(key.created)),
            )
        except sqlite3.IntegrityError:
            record = self._key_record(db, key.key)
            if record is None:  # pragma: no cover - the write lock is held: it cannot vanish
                raise
            raise KeyTaken(record) from None

    def key_record(self, key: str) -> KeyRecord | None:
        with self._guard() as db:
            return self._key_record(db, key)

    @staticmethod
    def _key_record(db: sqlite3.Connection, key: str) -> KeyRecord | None:
        row = db.execute(
            "SELECT digest, created, answer FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return KeyRecord(row[0], from_micros(row[1]), None if row[2] is None else bytes(row[2]))

    def prune(self, statuses: Sequence[Status], before: datetime, limit: int) -> int:
        chosen = [str(status) for status in statuses if status in PRUNABLE]
        if not chosen or limit <= 0:
            return 0
        sql = _PRUNE.format(statuses=", ".join(f"'{status}'" for status in chosen))
        with self._guard(write=True) as db, self._transaction():
            removed = db.execute(sql, (to_micros(before), limit)).rowcount
            if removed:
                db.execute("UPDATE meta SET value = value + ? WHERE name = 'pruned'", (removed,))
        return int(removed)

    def prune_keys(self, before: datetime, limit: int) -> int:
        with self._guard(write=True) as db:
            return int(db.execute(_PRUNE_KEYS, (to_micros(before), limit)).rowcount)

    def _first_singleton_clash(self, tasks: Sequence[Task]) -> int | None:
        for index, task in enumerate(tasks):
            if task.singleton is not None:
                row = self._db.execute(
                    "SELECT 1 FROM tasks WHERE singleton = ?", (task.singleton,)
                ).fetchone()
                if row is not None:
                    return index
        return None

    def get(self, task_id: str) -> Task | None:
        with self._guard() as db:
            row = db.execute(SELECT + " WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _row_to_task(row)

    def query(
        self,
        *,
        status: Status | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(str(status))
        if party is not None:
            clauses.append("party = ?")
            params.append(party)
        if after is not None:
            ts, attempts, created, id_ = after
            clauses.append("(timestamp, attempts, created, id) > (?, ?, ?, ?)")
            params.extend([to_micros(ts), attempts, to_micros(created), id_])
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._guard() as db:
            rows = db.execute(SELECT + where + ORDER + " LIMIT ?", (*params, limit)).fetchall()
        return [_row_to_task(row) for row in rows]

    def claim(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int] | None = None,
    ) -> list[Task]:
        if limits:
            return self._claim_limited(limit, now, lease_expires, token, limits)
        # By rowid, not id: the id would be looked up again in its own index for every row.
        now_us = to_micros(now)
        sql = (
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
            "lease_expires = ? WHERE rowid IN (SELECT rowid FROM tasks WHERE status = 'queued' "
            "AND timestamp <= ? AND run_at <= ?" + ORDER + " LIMIT ?)" + RETURNING
        )
        with self._guard(write=True) as db:
            rows = db.execute(
                sql, (token, to_micros(lease_expires), now_us, now_us, limit)
            ).fetchall()
        tasks = [_row_to_task(row) for row in rows]
        tasks.sort(key=lambda t: t.order_key)  # RETURNING gives no order guarantee
        return tasks

    def _claim_limited(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int],
    ) -> list[Task]:
        """``claim`` with caps: in one write transaction (so no other claim runs in between),
        read the running count of each capped party (the ``counts`` table, kept by triggers),
        then walk the due tasks in queue order, leaving out the parties at their cap (in the
        query itself, so that a long run of their tasks at the head costs no round trips),
        and take what fits."""
        now_us = to_micros(now)
        parties = list(limits)
        marks = ", ".join("?" * len(parties))
        chosen: list[int] = []
        with self._guard(write=True) as db, self._transaction():
            running = dict(
                db.execute(
                    f"SELECT party, n FROM counts WHERE status = 'running' AND party IN ({marks})",
                    parties,
                ).fetchall()
            )
            room = {party: cap - running.get(party, 0) for party, cap in limits.items()}
            after: tuple[Any, ...] | None = None
            while len(chosen) < limit:
                full = [party for party, left in room.items() if left <= 0]
                sql = (
                    "SELECT rowid, party, timestamp, attempts, created, id FROM tasks "
                    "WHERE status = 'queued' AND timestamp <= ? AND run_at <= ?"
                )
                params: list[Any] = [now_us, now_us]
                if full:
                    sql += f" AND party NOT IN ({', '.join('?' * len(full))})"
                    params += full
                if after is not None:
                    sql += " AND (timestamp, attempts, created, id) > (?, ?, ?, ?)"
                    params += after
                want = limit - len(chosen)
                rows = db.execute(sql + ORDER + " LIMIT ?", (*params, want)).fetchall()
                for rowid, party, *_key in rows:
                    left = room.get(party)
                    if left is not None:
                        if left <= 0:
                            continue
                        room[party] = left - 1
                    chosen.append(rowid)
                if len(rows) < want:
                    break
                after = tuple(rows[-1][2:])
            if not chosen:
                return []
            rows = db.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
                f"lease_expires = ? WHERE rowid IN ({', '.join('?' * len(chosen))})" + RETURNING,
                (token, to_micros(lease_expires), *chosen),
            ).fetchall()
        tasks = [_row_to_task(row) for row in rows]
        tasks.sort(key=lambda t: t.order_key)
        return tasks

    def claim_id(self, task_id: str, lease_expires: datetime, token: str) -> Task | None:
        sql = (
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
            "lease_expires = ? WHERE id = ? AND status = 'queued'" + RETURNING
        )
        with self._guard(write=True) as db:
            row = db.execute(sql, (token, to_micros(lease_expires), task_id)).fetchone()
        return None if row is None else _row_to_task(row)

    def update(self, write: Write) -> Task | None:
        sql, params = _update_sql(write)
        with self._guard(write=True) as db:
            row = db.execute(sql + RETURNING, params).fetchone()
        if row is None:
            return None
        if write.fields.get("status") == Status.QUEUED:
            self.notify()
        return _row_to_task(row)

    def write_many(self, writes: Sequence[Write]) -> list[bool]:
        if not writes:
            return []
        statements = _write_statements(writes, self._max_params)
        matched = [False] * len(writes)
        with self._guard(write=True) as db:
            if len(statements) == 1:
                # One statement is its own transaction in autocommit mode: it takes the write lock
                # as it starts (as BEGIN IMMEDIATE does) and commits as it ends.
                _apply(db, statements[0], writes, matched)
            else:
                with self._transaction():
                    for statement in statements:
                        _apply(db, statement, writes, matched)
        if any(
            ok and w.fields.get("status") == Status.QUEUED
            for w, ok in zip(writes, matched, strict=True)
        ):
            self.notify()
        return matched

    def expired(self, now: datetime, limit: int = 100) -> list[Task]:
        sql = (
            SELECT
            + " WHERE status = 'running' AND lease_expires < ? ORDER BY lease_expires LIMIT ?"
        )
        with self._guard() as db:
            rows = db.execute(sql, (to_micros(now), limit)).fetchall()
        return [_row_to_task(row) for row in rows]

    def next_run_at(self) -> datetime | None:
        with self._guard() as db:
            row = db.execute(NEXT_RUN_AT).fetchone()
        return None if row is None else from_micros(row[0])

    def stats(self, now: datetime) -> dict[str, Any]:
        """Counts from the ``counts`` table; ``due`` by counting, in the order index, whichever
        side of ``now`` is smaller (the due tasks, or the queued ones not yet due): both are
        counted up to a cap that grows fourfold until one side ends under it, so the cost is
        a few times the smaller side, not the table."""
        now_us = to_micros(now)
        with self._guard() as db:
            groups = db.execute("SELECT party, status, n FROM counts WHERE n > 0").fetchall()
            queued = sum(n for _, status, n in groups if status == "queued")
            cap = STATS_COUNT_CAP
            while True:
                due = db.execute(_DUE_CAPPED, (now_us, now_us, cap)).fetchone()[0]
                if due < cap:
                    break
                waiting = db.execute(_WAITING_CAPPED, (now_us, cap)).fetchone()[0]
                if waiting < cap:
                    due = queued - waiting - db.execute(_DELAYED, (now_us, now_us)).fetchone()[0]
                    break
                cap *= 4
            row = db.execute(_OLDEST_DUE, (now_us, now_us)).fetchone()
            pruned = db.execute("SELECT value FROM meta WHERE name = 'pruned'").fetchone()[0]
        oldest = None if row is None else from_micros(row[0])
        return assemble_stats(groups, due, oldest, pruned)

    def beat(self, record: dict[str, Any], now: datetime) -> None:
        with self._guard(write=True) as db:
            db.execute(
                "INSERT INTO schedulers (id, heartbeat, record) VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET heartbeat = excluded.heartbeat, record = excluded.record",
                (record["id"], to_micros(now), json.dumps(record, separators=(",", ":"))),
            )

    def schedulers(self, since: datetime | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT heartbeat, record FROM schedulers", []
        if since is not None:
            sql, params = sql + " WHERE heartbeat >= ?", [to_micros(since)]
        with self._guard() as db:
            rows = db.execute(sql, params).fetchall()
        records = [{**json.loads(record), "heartbeat": from_micros(beat)} for beat, record in rows]
        return sorted(records, key=lambda r: (str(r.get("started")), r["id"]))

    def forget_schedulers(self, before: datetime) -> int:
        with self._guard(write=True) as db:
            return db.execute(
                "DELETE FROM schedulers WHERE heartbeat < ?", (to_micros(before),)
            ).rowcount

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
            self._check_file(where)
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
                finally:
                    self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"{where}: {_unwritable_reason(exc)} ({exc})") from exc
            finally:
                if self._writer_fd is not None:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _check_file(self, where: str) -> None:
        """Raise unless the file still starts with SQLite's header and its file system has room.

        A connection works from pages it has cached and from the log, so it may not notice a file
        overwritten under it; the header is the cheap check (a full ``quick_check`` reads every
        page, far too slow for a health probe).
        """
        if self.path == ":memory:":
            return
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(_HEADER))
        except OSError as exc:
            raise StoreUnavailable(f"{where}: {exc}") from exc
        if header and header != _HEADER:
            raise StoreUnavailable(f"{where}: the database file is corrupt (no SQLite header)")
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            raise StoreUnavailable(f"{where}: {exc}") from exc
        if not fs.f_blocks:  # a file system that reports no sizes (some FUSE, network ones)
            return
        # root may fill the blocks reserved for it; others stop at f_bavail.
        free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(f"{where}: the disk is full ({free} bytes free)")

    def listen(self) -> Listener | None:
        return listener_or_none(self._wake_dir)

    def notify(self) -> None:
        if self._notifier is None:
            self._notifier = Notifier(self._wake_dir)
        self._notifier.notify()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._close_lock_file()
            if self._notifier is not None:
                self._notifier.close()

    def describe(self) -> list[Finding]:
        """The file, its journal mode, synchronous setting, schema version and size."""
        with self._guard() as db:
            journal = db.execute("PRAGMA journal_mode").fetchone()[0]
            synchronous = db.execute("PRAGMA synchronous").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            missing = self._missing_columns()
        findings = [
            Finding("file", os.path.abspath(self.path) if self.path != ":memory:" else self.path),
            Finding(
                "journal mode",
                journal,
                problem=None
                if journal == "wal" or self.path == ":memory:"
                else "the store is not in WAL mode: open it once with Party (it switches it)",
            ),
            Finding(
                "synchronous",
                {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(synchronous, str(synchronous)),
                warning=None
                if synchronous >= 2
                else "a power cut may lose the last acknowledged adds (?synchronous=normal)",
            ),
            Finding(
                "schema version",
                f"{version} (this Party: {SCHEMA_VERSION})",
                problem=None
                if version >= SCHEMA_VERSION and not missing
                else "open the store once with this version of Party: it migrates the file",
            ),
        ]
        if self.path != ":memory:":
            size = sum(
                os.path.getsize(path)
                for path in (self.path, self.path + "-wal")
                if os.path.exists(path)
            )
            findings.append(Finding("size", f"{size / 1e6:.1f} MB (with its log)"))
        return findings

    def explain_claim(self, now: datetime) -> list[str]:
        """The query plan of the due-task claim's inner select (for benchmarks and tests)."""
        now_us = to_micros(now)
        sql = (
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE status = 'queued' AND timestamp <= ? "
            "AND run_at <= ?" + ORDER + " LIMIT 16"
        )
        with self._guard() as db:
            return [row[-1] for row in db.execute(sql, (now_us, now_us)).fetchall()]
