"""The task record and its statuses: the one shape every layer passes around.

Imports only the standard library and ``timestamps``; ids have the shape of a BSON ObjectId, which
the Mongo store converts them to, without importing ``bson``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from .timestamps import from_micros, to_micros

ID_PATTERN = re.compile(r"[0-9a-f]{24}")


class Status(StrEnum):
    """Where a task is in its life. ``queued`` and ``running`` are the only live statuses.

    A ``StrEnum`` (rq's ``JobStatus`` shape on Python 3.11): members compare equal to their
    lowercase values, so stores and the wire use the plain strings.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


ALL_STATUSES = tuple(s.value for s in Status)


# The parts of an ObjectId after its 4-byte time: 5 random bytes per process and a 3-byte counter
# from a random start. Drawn again in a forked child, which must not repeat its parent's ids.
_id_process = ""
_id_counter: Iterator[int] = iter(())


def _seed_ids() -> None:
    global _id_process, _id_counter
    _id_process = os.urandom(5).hex()
    _id_counter = itertools.count(int.from_bytes(os.urandom(3)))


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)


def new_id() -> str:
    """A fresh 24-hex id (a BSON ObjectId, so ids sort roughly by creation on both stores).

    Built as ``bson.ObjectId()`` builds one (seconds, process, counter), at a third of its cost:
    a batch of 1,000 tasks draws 1,000 ids.
    """
    return f"{int(time.time()):08x}{_id_process}{next(_id_counter) & 0xFFFFFF:06x}"


#: Separates a lease token's random part from the owner written after it ("<random>~<owner>").
OWNER_MARK = "~"


def owner_of(lease: str | None) -> str | None:
    """The owner written into a lease token, if any."""
    if not lease or OWNER_MARK not in lease:
        return None
    return lease.split(OWNER_MARK, 1)[1]


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a 24-hex lowercase task id."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: equal data give equal text whatever the key order."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def singleton_key(party: str, data: dict[str, Any]) -> str:
    """The key the store's unique index holds for a live recurring task of (party, data).

    A hash keeps the indexed value short whatever the size of ``data``.
    """
    import hashlib  # only here: its OpenSSL backend costs about 4 ms to import

    digest = hashlib.sha256(canonical_json([party, data]).encode()).hexdigest()
    return f"{party}:{digest}"


class Kind(StrEnum):
    """How a task field is typed, and so how every codec (SQLite, Mongo, the wire) encodes it."""

    ID = "id"  # 24-hex text; an ObjectId named _id in Mongo, "_id" on the wire
    TEXT = "text"
    STATUS = "status"  # a Status, stored and sent as its string
    INT = "int"
    BOOL = "bool"
    TIME = "time"  # naive UTC datetime: integer microseconds in SQLite, a BSON date, ISO 8601 text
    JSON = "json"  # any JSON value: text in SQLite, BSON in Mongo, as is on the wire


class Wire(StrEnum):
    """When a field appears in a task on the wire."""

    ALWAYS = "always"  # every task carries it (null while unset)
    SET = "set"  # once it holds a value
    RUN = "run"  # once the task has started a run (``started_on`` set), even if null
    NEVER = "never"  # internal to the queue and the stores


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The ``default`` of a field every task must be given.
REQUIRED: Any = _Required()


def _field(
    kind: Kind,
    default: Any = REQUIRED,
    *,
    nullable: bool = False,
    wire: Wire = Wire.ALWAYS,
    wire_name: str | None = None,
    not_before: bool = False,
) -> Any:
    meta = {
        "kind": kind, "nullable": nullable, "wire": wire, "wire_name": wire_name,
        "not_before": not_before,
    }  # fmt: skip
    return field(metadata=meta) if default is REQUIRED else field(default=default, metadata=meta)


@dataclass
class Task:
    """One task as stored, and the one declaration of its fields: each ``_field`` gives its kind,
    whether it may be None, its default and its place on the wire; ``TASK_FIELDS`` reads them, and
    the stores' codecs (and the wire's) are built from that table. A field added here reaches
    both stores (a SQLite file gains the column on open) without touching their code.

    ``run_at`` is when the task may next be claimed: its ``timestamp``, or later while a retry
    delay runs (retries never change ``timestamp``, which keeps the task's place in the queue
    order). ``lease`` is the token of the current claim; every write of a run is conditional on
    it. ``singleton`` is set only while a recurring task is queued or running, and is unique.
    ``schedule`` marks a task that a handler's declared schedule created (the declaration's text,
    ``schedule.Declaration.text``): only such tasks are moved or deleted when the declaration
    changes, and a changed text is how a change is seen.
    """

    id: str = _field(Kind.ID, wire_name="_id")
    party: str = _field(Kind.TEXT)
    data: dict[str, Any] = _field(Kind.JSON)
    timestamp: datetime = _field(Kind.TIME, not_before=True)
    created: datetime = _field(Kind.TIME)
    run_at: datetime = _field(Kind.TIME, not_before=True, wire=Wire.NEVER)
    attempts: int = _field(Kind.INT, 0)
    status: Status = _field(Kind.STATUS, Status.QUEUED)
    is_recurring: bool = _field(Kind.BOOL, False)
    last_run_on: datetime | None = _field(Kind.TIME, None, nullable=True)
    started_on: datetime | None = _field(Kind.TIME, None, nullable=True, wire=Wire.RUN)
    completed_on: datetime | None = _field(Kind.TIME, None, nullable=True, wire=Wire.SET)
    result: Any = _field(Kind.JSON, None, nullable=True, wire=Wire.RUN)
    last_error: dict[str, Any] | None = _field(Kind.JSON, None, nullable=True, wire=Wire.SET)
    lease: str | None = _field(Kind.TEXT, None, nullable=True, wire=Wire.NEVER)
    lease_expires: datetime | None = _field(Kind.TIME, None, nullable=True, wire=Wire.NEVER)
    singleton: str | None = _field(Kind.TEXT, None, nullable=True, wire=Wire.NEVER)
    schedule: str | None = _field(Kind.TEXT, None, nullable=True, wire=Wire.NEVER)

    @property
    def order_key(self) -> tuple[datetime, int, datetime, str]:
        """The queue order: timestamp, then attempts, then created, then id."""
        return (self.timestamp, self.attempts, self.created, self.id)


@dataclass(frozen=True)
class FieldSpec:
    """One field of ``Task`` as the codecs see it.

    ``default`` is ``REQUIRED`` for a field every task is given. ``not_before`` marks a time before
    which the task must not start: a store of coarser precision rounds it up, others down.
    ``wire`` says when the field is shown on the wire, under ``wire_name``.
    """

    name: str
    kind: Kind
    nullable: bool
    default: Any
    wire: Wire
    wire_name: str
    not_before: bool

    @property
    def required(self) -> bool:
        """True when every task must be given this field (it has no default)."""
        return self.default is REQUIRED


#: The fields of a task, in declaration order (the order of ``Task(...)``'s positional arguments,
#: of a pickled task and of a SQLite row).
TASK_FIELDS: tuple[FieldSpec, ...] = tuple(
    FieldSpec(
        name=f.name,
        kind=f.metadata["kind"],
        nullable=f.metadata["nullable"],
        default=REQUIRED if f.default is MISSING else f.default,
        wire=f.metadata["wire"],
        wire_name=f.metadata["wire_name"] or f.name,
        not_before=f.metadata["not_before"],
    )
    for f in fields(Task)
)
#: Each field's spec by name.
FIELD: dict[str, FieldSpec] = {spec.name: spec for spec in TASK_FIELDS}
#: Each field's kind by name (what a codec dispatches on).
FIELD_KINDS: dict[str, Kind] = {spec.name: spec.kind for spec in TASK_FIELDS}

_STATUSES = {status.value: status for status in Status}


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def compile_function(name: str, source: str, namespace: dict[str, Any]) -> Any:
    """Define function ``name`` from ``source`` in ``namespace`` (as ``dataclasses`` and
    ``namedtuple`` build theirs): a codec of the task fields written out for the fields of
    ``TASK_FIELDS`` runs as fast as one written by hand, with no loop over the table per task."""
    exec(compile(source, f"<party codec {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def _time_decoder(spec: FieldSpec, anchor: FieldSpec, var: str) -> str:
    """Source decoding integer microseconds ``var`` of ``spec``. A fresh task's required times are
    one instant: each equal to ``anchor``'s reuses its datetime, converted once."""
    if spec.nullable:
        return f"None if {var} is None else from_micros({var})"
    if spec is anchor:
        return "_t0"
    return f"_t0 if {var} == {anchor.name} else from_micros({var})"


def _build_pickling() -> tuple[Callable[..., Task], Callable[[Task], Any]]:
    names = [spec.name for spec in TASK_FIELDS]
    params = ["id_" if name == "id" else name for name in names]
    times = [spec for spec in TASK_FIELDS if spec.kind == Kind.TIME]
    anchor = next(spec for spec in times if not spec.nullable)
    args = []
    for spec, var in zip(TASK_FIELDS, params, strict=True):
        if spec.kind == Kind.TIME:
            args.append(_time_decoder(spec, anchor, var))
        elif spec.kind == Kind.STATUS:
            args.append(f"_STATUSES[{var}]")
        else:
            args.append(var)
    source = (
        f"def task_from_micros({', '.join(params)}):\n"
        f"    _t0 = from_micros({anchor.name})\n"
        f"    return Task({', '.join(args)})\n"
    )
    decode = compile_function(
        "task_from_micros",
        source,
        {"Task": Task, "from_micros": from_micros, "_STATUSES": _STATUSES},
    )
    values = []
    for spec in TASK_FIELDS:
        if spec.kind == Kind.TIME:
            values.append(
                f"_micros(self.{spec.name})" if spec.nullable else f"to_micros(self.{spec.name})"
            )
        elif spec.kind == Kind.STATUS:
            values.append(f"str(self.{spec.name})")
        else:
            values.append(f"self.{spec.name}")
    source = f"def __reduce__(self):\n    return (task_from_micros, ({', '.join(values)},))\n"
    reduce = compile_function(
        "__reduce__",
        source,
        {"task_from_micros": decode, "to_micros": to_micros, "_micros": _micros},
    )
    return decode, reduce


#: ``task_from_micros(*values)``: a Task from its fields in ``TASK_FIELDS`` order, with times as
#: integer microseconds (UTC) and the status as its string: the shape of a pickled task and of a
#: SQLite row once its JSON is decoded.
task_from_micros, _reduce = _build_pickling()
# Tasks cross a pipe to a worker on every run: a flat tuple with times as integers and the status
# as its string pickles several times faster than the dataclass default.
Task.__reduce__ = _reduce  # type: ignore[assignment,method-assign]
task_from_micros.__module__ = __name__
task_from_micros.__qualname__ = "task_from_micros"


class Leased(Protocol):
    """A claimed task as far as its fenced writes need it: a ``Task``, or what a worker that
    claimed it told its parent (``worker.Claimed``)."""

    @property
    def id(self) -> str: ...

    @property
    def lease(self) -> str | None: ...

    @property
    def attempts(self) -> int: ...


@dataclass
class Write:
    """A conditional single-task update: set ``fields`` where the id matches, and where the lease
    token and status match when given. A field set to None is cleared."""

    task_id: str
    fields: dict[str, Any]
    lease: str | None = None
    statuses: tuple[Status, ...] | None = None


@dataclass
class NewTask:
    """A task to add: the input of ``TaskQueue.add`` and of ``tasks.add`` in on_complete."""

    party: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    #: The text of the declared schedule that adds it (``Task.schedule``); None for other adds.
    schedule: str | None = None


@dataclass
class Outcome:
    """What one run of a claimed task produced; the runner builds it, the queue records it.

    ``error`` is ``{"type", "message", "traceback", "at"}`` when the run failed. ``next_run`` is set
    when a recurring task's on_complete scheduled one; ``follow_ups`` holds its ``tasks.add`` calls.
    ``permanent`` marks a failure no retry can mend (an unknown handler).
    """

    task: Task
    ok: bool
    started_on: datetime
    finished_on: datetime
    result: Any = None
    error: dict[str, Any] | None = None
    next_run: datetime | None = None
    follow_ups: list[NewTask] = field(default_factory=list)
    permanent: bool = False
