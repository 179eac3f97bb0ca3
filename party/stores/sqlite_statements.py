"""The SQL of the SQLite store's task operations and the codecs between a ``Task`` and its row.

The statements (select, insert, the stats and prune queries), the row decoder and encoder written
out once for ``model.TASK_FIELDS`` (one positional pass per task: the hot path of every claim and
batch add), and the batching of fenced writes into one ``UPDATE ... FROM (VALUES ...)`` per shape.
Pure functions and strings: nothing here holds a connection or a lock (``sqlite_file`` does).
Imports only the standard library, ``model``, ``timestamps`` and ``sqlite_schema``: never
``stores.base``, ``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..model import TASK_FIELDS, Kind, Status, Task, Write, compile_function, task_from_micros
from ..timestamps import to_micros
from .sqlite_schema import _sql_literal

COLUMNS = tuple(spec.name for spec in TASK_FIELDS)
SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM tasks"
RETURNING = " RETURNING " + ", ".join(COLUMNS)
INSERT = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
ORDER = " ORDER BY timestamp, attempts, created, id"
# A queued task is due at its run_at, which is its timestamp but for a retry waiting for its
# delay (run_at > timestamp): those are the only entries of tasks_delayed. The next due time is
# the earlier of the first of them and the first queued task of the order index that waits for
# no delay (the walk skips the delayed retries at its head; the claim walks them as well).
# INDEXED BY: left to itself the planner may scan every queued row for a MIN.
_DELAYED_WHERE = "status = 'queued' AND run_at > timestamp"
NEXT_DELAYED = (
    "SELECT run_at FROM tasks INDEXED BY tasks_delayed WHERE " + _DELAYED_WHERE
    + " ORDER BY run_at LIMIT 1"
)  # fmt: skip
NEXT_UNDELAYED = (
    "SELECT timestamp FROM tasks INDEXED BY tasks_order WHERE status = 'queued' "
    "AND run_at <= timestamp ORDER BY status, timestamp LIMIT 1"
)

# Each party's total and its ended tasks (the ``totals`` and ``ended`` tables, see the schema) and
# its running tasks, counted in the order index (they are few: what the workers hold). One
# statement, so one snapshot: a run ending between two reads would show as a queued task.
_TALLIES = (
    "SELECT party, 'total', n FROM totals WHERE n > 0 "
    "UNION ALL SELECT party, status, n FROM ended WHERE n > 0 "
    "UNION ALL SELECT party, 'running', COUNT(*) FROM tasks WHERE status = 'running' GROUP BY party"
)


def tally(rows: Iterable[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The (party, status, count) rows of ``stats`` from the rows of ``_TALLIES``: a party's
    queued tasks are its total less its running and ended ones."""
    groups: list[tuple[str, str, int]] = []
    queued: dict[str, int] = {}
    for party, status, n in rows:
        if status == "total":
            queued[party] = queued.get(party, 0) + n
        else:
            queued[party] = queued.get(party, 0) - n
            groups.append((party, status, n))
    groups += [(party, "queued", n) for party, n in queued.items() if n > 0]
    return groups


#: Index entries ``stats`` first counts on each side of ``now`` (see ``SqliteStore.stats``).
STATS_COUNT_CAP = 20_000
_DUE_CAPPED = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' AND timestamp <= ? "
    "AND run_at <= ? LIMIT ?)"
)
# Queued but not due: a timestamp ahead (the order index), or one passed with a retry delay ahead
# (tasks_delayed: retries are few).
_WAITING_CAPPED = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' AND timestamp > ? LIMIT ?)"
)
_DELAYED = (
    "SELECT COUNT(*) FROM tasks INDEXED BY tasks_delayed WHERE " + _DELAYED_WHERE
    + " AND run_at > ? AND timestamp <= ?"
)  # fmt: skip
_OLDEST_DUE = (
    "SELECT timestamp FROM tasks WHERE status = 'queued' AND timestamp <= ? AND run_at <= ? "
    "ORDER BY status, timestamp LIMIT 1"
)

# The WHERE of tasks_ended, written as its definition writes it: SQLite uses a partial index only
# for a query that repeats its condition.
_ENDED = "status NOT IN ('queued', 'running')"
_PRUNE = (
    "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks INDEXED BY tasks_ended WHERE "
    + _ENDED
    + " AND status IN ({statuses}) AND coalesce(completed_on, created) < ? LIMIT ?)"
)
_PRUNE_KEYS = (
    "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created < ? "
    "LIMIT ?)"
)


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


_scan = json.JSONDecoder().scan_once  # the C scanner on CPython


def _loads(text: str) -> Any:
    """``json.loads`` of a JSON column: the scanner called directly, which skips the two Python
    frames and two whitespace matches of ``json.loads`` around it (most of its cost for a small
    object). Anything the scanner does not consume whole (whitespace around it, invalid text, not
    a str) goes through ``json.loads``: the answer, or the error, is always its."""
    try:
        value, end = _scan(text, 0)
    except (StopIteration, TypeError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


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
    namespace = {"task_from_micros": task_from_micros, "loads": _loads}
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
    return _values_encoder(names)(write.fields)


@lru_cache(maxsize=256)
def _values_encoder(names: tuple[str, ...]) -> Callable[[dict[str, Any]], list[Any]]:
    """``values(fields)``: the encoded values of ``names`` (a shape's fields that are set, never
    None), written out once per shape: each outcome of a batch is encoded without a call per
    field."""
    namespace: dict[str, Any] = {}
    parts = []
    for index, name in enumerate(names):
        encode = _ENCODERS.get(name)
        if encode is None:
            parts.append(f"fields[{name!r}]")
        else:
            namespace[f"encode_{index}"] = encode
            parts.append(f"encode_{index}(fields[{name!r}])")
    source = f"def values(fields):\n    return [{', '.join(parts)}]\n"
    return compile_function("values", source, namespace)  # type: ignore[no-any-return]


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
