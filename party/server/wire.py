"""The wire shape of the HTTP API: request bodies in, tasks and pages out, as JSON.

This module is the only one that knows what a request body or a task looks like on the wire: the
``{"tasks": [...]}`` envelope of ``POST /tasks`` and its limits, the task's JSON fields, the paging
cursor of ``GET /tasks`` and the filters it accepts. Everything it rejects is a ``ValidationError``
naming the item, the field and what is accepted. It imports ``model``, ``errors`` and
``timestamps``; never tornado, a store or the queue, so it is tested as pure functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..admission import check_items
from ..errors import ValidationError
from ..model import ALL_STATUSES, TASK_FIELDS, FieldSpec, Kind, Task, Wire, is_valid_id
from ..storable import INT64_MAX
from ..timestamps import format_timestamp, from_micros, to_micros
from ..views import BEAT_EVERY, REASONS

DEFAULT_PAGE = 100
MAX_PAGE = 1000

# -- shapes ---------------------------------------------------------------------------------------
# What crosses the wire, declared once as JSON Schema (2020-12, as OpenAPI 3.1 takes it):
# ``server.openapi`` publishes these in ``GET /openapi.json`` and the tests validate every answer
# against them. A change to an encoder or a parser below changes its shape here.


@dataclass(frozen=True)
class Field:
    """One field of a JSON object on the wire: its JSON Schema and what it means.

    ``required``: every object carries it (an answer's field) or must (a request's field).
    """

    schema: Mapping[str, Any]
    doc: str
    required: bool = True


@dataclass(frozen=True)
class Shape:
    """A JSON object on the wire, by its fields. ``closed``: the server refuses other fields (a
    request's shape); an answer's shape is open, as every object may carry more keys later."""

    doc: str
    fields: Mapping[str, Field]
    closed: bool = False


def ref(shape: str) -> dict[str, str]:
    """A JSON Schema reference to the shape named ``shape`` in ``SHAPES``."""
    return {"$ref": f"#/components/schemas/{shape}"}


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` or null."""
    return {"anyOf": [dict(schema), {"type": "null"}]}


TASK_ID: Mapping[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
#: A time in an answer: ``format_timestamp``'s ISO 8601 UTC with microseconds.
TIME: Mapping[str, Any] = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
    "examples": ["2014-03-11T05:12:22.086400Z"],
}
#: A time in a request: what ``timestamps.parse_timestamp`` accepts; null means now.
TIME_INPUT: Mapping[str, Any] = {
    "anyOf": [
        {"type": "string", "description": "ISO 8601; naive is UTC, an offset is converted"},
        {"type": "number", "description": "epoch seconds"},
        {
            "type": "object",
            "description": "MongoDB extended JSON",
            "properties": {"$date": {"type": ["string", "number"]}},
            "required": ["$date"],
            "additionalProperties": False,
        },
        {"type": "null", "description": "now"},
    ],
}
STATUS: Mapping[str, Any] = {"type": "string", "enum": list(ALL_STATUSES)}
_COUNT: Mapping[str, Any] = {"type": "integer", "minimum": 0}

#: The JSON Schema of each kind of task field (``model.Kind``) on the wire.
KIND_SCHEMA: Mapping[Kind, Mapping[str, Any]] = {
    Kind.ID: TASK_ID,
    Kind.TEXT: {"type": "string"},
    Kind.STATUS: STATUS,
    Kind.INT: _COUNT,
    Kind.BOOL: {"type": "boolean"},
    Kind.TIME: TIME,
    Kind.JSON: {},
}
#: What each task field shown on the wire means (by ``model.Task`` name); a test wants one each.
TASK_DOCS: Mapping[str, str] = {
    "id": "the task's id",
    "party": "the handler's name",
    "data": "the handler's input",
    "timestamp": "when it is due (UTC); retries never change it",
    "created": "when it was added",
    "attempts": "runs started; 0 before the first",
    "status": "where it is in its life",
    "is_recurring": "its handler re-queues it",
    "last_run_on": "start of the previous run of a recurring task",
    "started_on": "start of its latest run",
    "completed_on": "end of its latest run",
    "result": "what its latest run returned (any JSON)",
    "last_error": "the latest failure",
}
#: Task fields whose schema is narrower than their kind's.
_TASK_SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "data": {"type": "object"},
    "last_error": ref("TaskError"),
}


def _task_field(spec: FieldSpec) -> Field:
    """The wire declaration of a task field, from ``model.TASK_FIELDS``: present on every task
    (null while unset when nullable) or only once known."""
    schema = _TASK_SCHEMAS.get(spec.name, KIND_SCHEMA[spec.kind])
    always = spec.wire is Wire.ALWAYS
    return Field(
        nullable(schema) if always and spec.nullable else schema,
        TASK_DOCS.get(spec.name, ""),
        required=always,
    )


#: A task as ``encode_task`` writes it: the fields of ``model.TASK_FIELDS`` shown on the wire.
TASK = Shape(
    "A task. Fields that are not required appear once known.",
    {
        **{s.wire_name: _task_field(s) for s in TASK_FIELDS if s.wire is not Wire.NEVER},
        "waiting": Field(
            nullable(ref("Waiting")),
            "why it is not running, or where it runs; null once completed, failed or deleted",
        ),
    },
)
#: ``views.waiting``: one of ``views.REASONS``, the first that applies in that order.
WAITING = Shape(
    "Why a queued task is not running yet, or where a running one runs.",
    {
        "reason": Field(
            {"type": "string", "enum": list(REASONS)},
            "running: a worker runs it; no_handler: no live scheduler has its handler; "
            "scheduled: its timestamp is ahead; retry_delay: a failed run's retry waits; "
            "limited: its handler is at max_running; due: waiting for a free worker",
        ),
        "until": Field(
            nullable(TIME), "when the reason ends (the lease's end for running), when known"
        ),
        "detail": Field({"type": "string"}, "one sentence for a person"),
    },
)
RUN_NOW = Shape(
    "A run in progress on a scheduler's worker.",
    {
        "_id": Field(TASK_ID, "the task's id"),
        "party": Field({"type": "string"}, "its handler"),
        "since": Field(TIME, "when the run started"),
        "worker": Field({"type": "integer"}, "the worker's index in its scheduler", False),
        "pid": Field({"type": "integer"}, "the worker's process id", False),
    },
)
SCHEDULER = Shape(
    "A live scheduler, from its latest heartbeat.",
    {
        "id": Field({"type": "string"}, "the scheduler's id (new at each start)"),
        "host": Field({"type": "string"}, "the host it runs on"),
        "pid": Field({"type": "integer"}, "its process id"),
        "started": Field(TIME, "when it started"),
        "heartbeat": Field(TIME, "its latest beat"),
        "workers": Field(_COUNT, "its worker processes"),
        "concurrency": Field(_COUNT, "runs at once in each worker"),
        "handlers": Field({"type": "array", "items": {"type": "string"}}, "handlers it loaded"),
        "running": Field({"type": "array", "items": ref("RunNow")}, "what its workers run"),
        "runs": Field(
            {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": _COUNT},
            },
            "its finished runs by handler, then outcome (completed, retried, failed)",
        ),  # fmt: skip
        "beat_every": Field({"type": "number"}, "seconds between its beats"),
    },
)
SCHEDULERS = Shape(
    "The live schedulers on the store (a beat within three beats, not stopped).",
    {"schedulers": Field({"type": "array", "items": ref("Scheduler")}, "oldest start first")},
)
SCHEDULE = Shape(
    "A schedule declared on a handler class, as the live schedulers that loaded it declare it.",
    {
        "party": Field({"type": "string"}, "the handler"),
        "schedule": Field(nullable({"type": "string"}), "its cron expression, or null"),
        "every": Field(nullable({"type": "number"}), "its interval in seconds, or null"),
        "timezone": Field({"type": "string"}, "the IANA time zone the cron is read in"),
        "data": Field({"type": "object"}, "the data of its task (schedule_data)", False),
        "next": Field(TIME, "its next slot: the queued task's time, or the next one computed"),
        "task": Field(nullable(ref("ScheduledTask")), "its live (queued or running) task, or null"),
    },
)
SCHEDULED_TASK = Shape(
    "The live task of a declared schedule.",
    {"_id": Field(TASK_ID, "the task's id"), "timestamp": Field(TIME, "its slot")},
)
SCHEDULES = Shape(
    "What the live schedulers declare (the scheduler started last wins where they differ).",
    {"schedules": Field({"type": "array", "items": ref("Schedule")}, "by handler name")},
)
TASK_ERROR = Shape(
    "How a run failed.",
    {
        "type": Field({"type": "string"}, "the exception's class, or a cause such as a timeout"),
        "message": Field({"type": "string"}, "what went wrong"),
        "traceback": Field(nullable({"type": "string"}), "where, when known"),
        "at": Field(TIME, "when"),
    },
)
#: One item of ``POST /tasks``.
ITEM = Shape(
    "A task to add.",
    {
        "party": Field(
            {"type": "string", "minLength": 1, "examples": ["SampleTask"]},
            "the handler's name (a class name)",
        ),
        "data": Field(
            nullable({"type": "object"}),
            "the handler's input (default {}): keys must not start with '$' nor hold NUL, "
            "integers fit 64 bits, at most 100 levels deep and 15 MiB",
            required=False,
        ),
        "timestamp": Field(TIME_INPUT, "when it is due (default: now)", required=False),
    },
    closed=True,
)
#: The fields of one item of ``POST /tasks``.
ITEM_FIELDS = tuple(ITEM.fields)
ADD = Shape(
    "A batch of tasks, added all or nothing (at most --max-batch, 5000 by default).",
    {"tasks": Field({"type": "array", "items": ref("TaskItem"), "minItems": 1}, "the tasks")},
    closed=True,
)
RUN = Shape("A force-run takes no parameters: no body, {} or null.", {}, closed=True)
PAGE = Shape(
    "A page of tasks in queue order.",
    {
        "tasks": Field({"type": "array", "items": ref("Task")}, "the tasks of the page"),
        "next": Field(
            nullable({"type": "string"}),
            "set when the page is full: pass it as 'after' for the next page (which may be empty)",
        ),
    },
)
#: The query of ``GET /tasks``, each parameter at most once.
LIST_QUERY: Mapping[str, Field] = {
    "status": Field(STATUS, "only tasks of this status", required=False),
    "party": Field({"type": "string"}, "only tasks of this handler", required=False),
    "limit": Field(
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        "tasks per page",
        required=False,
    ),
    "after": Field(
        {"type": "string"}, "the 'next' value of the previous page (opaque)", required=False
    ),
}
#: The query parameters of ``GET /tasks``.
LIST_PARAMS = tuple(LIST_QUERY)
STATS = Shape(
    "Counts of the store; more keys may follow.",
    {
        "statuses": Field(
            {
                "type": "object",
                "properties": {status: _COUNT for status in ALL_STATUSES},
                "required": list(ALL_STATUSES),
            },
            "tasks per status",
        ),
        "parties": Field(
            {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": _COUNT},
            },
            "tasks per handler, then per status",
        ),  # fmt: skip
        "due": Field(_COUNT, "queued tasks whose time has come"),
        "oldest_due_seconds": Field(
            nullable({"type": "number"}), "how long the oldest due task has waited"
        ),
        "no_handler": Field(
            _COUNT, "queued tasks that no live scheduler has the handler of", required=False
        ),
        "pruned": Field(
            _COUNT, "tasks removed by retention since the store was created", required=False
        ),
    },
)
HEALTH = Shape(
    "The store takes writes.", {"status": Field({"const": "ok"}, "always 'ok' with a 200")}
)
ERROR = Shape(
    "Every error answer.",
    {
        "error": Field({"type": "string"}, "what is wrong and how to fix it"),
        "index": Field(_COUNT, "the offending item of a batch", required=False),
    },
)
#: Every shape by the name the document gives it.
SHAPES: Mapping[str, Shape] = {
    "Task": TASK,
    "TaskError": TASK_ERROR,
    "TaskItem": ITEM,
    "AddTasks": ADD,
    "RunTask": RUN,
    "Page": PAGE,
    "Stats": STATS,
    "Waiting": WAITING,
    "RunNow": RUN_NOW,
    "Scheduler": SCHEDULER,
    "Schedulers": SCHEDULERS,
    "Schedule": SCHEDULE,
    "ScheduledTask": SCHEDULED_TASK,
    "Schedules": SCHEDULES,
    "Health": HEALTH,
    "Error": ERROR,
}

_ITEM_FIELD_SET = frozenset(ITEM_FIELDS)

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode = _encoder.encode
_encode_str = json.encoder.encode_basestring
# The C encoder of ``_encoder`` called directly, for the many small values of ``dumps_tasks``:
# json's own entry points build it anew on every call. No cycle check: the values are task data,
# decoded from JSON or checked by the queue.
_encode_chunks = (
    None
    if json.encoder.c_make_encoder is None
    else json.encoder.c_make_encoder(
        None, _encoder.default, _encode_str, None, ":", ",", False, False, False
    )
)


def dumps(value: Any) -> bytes:
    """Encode a response body (compact UTF-8 JSON)."""
    return _encode(value).encode()


def loads(body: bytes) -> Any:
    """Decode a request body; ``ValidationError`` says why it is not JSON. Empty means None."""
    if not body or body.isspace():
        return None
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ValidationError("the request body is not UTF-8 text; send JSON") from None
    except ValueError as exc:
        raise ValidationError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValidationError(
            "the request body is nested too deeply to read; data may hold at most 100 levels"
        ) from None


def parse_tasks(payload: Any, max_batch: int) -> list[Mapping[str, Any]]:
    """Check the envelope of ``POST /tasks`` and the shape of each item; return the items.

    Checks here are those of the request (an object with only ``tasks``, a non-empty list of at
    most ``max_batch`` items); each item's shape (an object with only ``party``, ``data`` and
    ``timestamp``, ``party`` present) is checked by ``admission.check_items``, and its values
    (known handler, data, timestamp) by the queue when it adds them: the in-process add
    (``party.open``) calls the same two.
    """
    if not isinstance(payload, dict):
        got = "an empty body" if payload is None else f"a JSON {_kind(payload)}"
        raise ValidationError(
            'expected a JSON object {"tasks": [{"party": ..., "data": {}, "timestamp": ...}]}'
            f", got {got}",
            field="tasks",
        )
    if "tasks" not in payload:
        raise ValidationError(
            'the body has no "tasks" field; send {"tasks": [{"party": "<handler name>"}, ...]}',
            field="tasks",
        )
    if len(payload) > 1:
        unknown = ", ".join(repr(k) for k in payload if k != "tasks")
        raise ValidationError(
            f'unknown field(s) {unknown} beside "tasks"; the body holds only "tasks"',
            field="tasks",
        )
    items = payload["tasks"]
    if not isinstance(items, list):
        raise ValidationError(
            f'"tasks" must be a JSON array of task objects, got a JSON {_kind(items)}',
            field="tasks",
        )
    if not items:
        raise ValidationError('"tasks" is empty; send at least one task', field="tasks")
    if len(items) > max_batch:
        raise ValidationError(
            f"{len(items)} tasks in one request is over the limit of {max_batch} (--max-batch); "
            "split the batch into several requests",
            field="tasks",
        )
    check_items(items)  # the item checks the in-process add shares (``admission``)
    return items


_ENVELOPE = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"tasks"[ \t\n\r]*:[ \t\n\r]*\[')
_SPACE = re.compile(r"[ \t\n\r]*")
_decode_one = json.JSONDecoder().raw_decode


def parse_tasks_body(body: bytes, max_batch: int) -> list[Mapping[str, Any]]:
    """``parse_tasks(loads(body), max_batch)`` for a large body, decoded one item at a time.

    One ``json.loads`` of megabytes holds the interpreter for its whole length, so a thread doing
    it would stall the event loop all the same; item by item, the loop gets its turns between
    items, and a batch over ``max_batch`` is refused without decoding the rest. Any body that is
    not a plain envelope is decoded whole, for ``loads``' and ``parse_tasks``' own messages.
    """
    head = _ENVELOPE.match(body)
    if head is None:
        return parse_tasks(loads(body), max_batch)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ValidationError("the request body is not UTF-8 text; send JSON") from None
    at = _SPACE.match(text, len(body[: head.end()].decode())).end()
    items: list[Any] = []
    count = 0
    try:
        if text.startswith("]", at):
            at += 1
        else:
            while True:
                item, at = _decode_one(text, at)
                count += 1
                if count <= max_batch:
                    items.append(item)  # past the limit, items are only counted (the message)
                at = _SPACE.match(text, at).end()
                if text.startswith("]", at):
                    at += 1
                    break
                if not text.startswith(",", at):
                    raise ValueError("expected ',' or ']'")
                at = _SPACE.match(text, at + 1).end()
        at = _SPACE.match(text, at).end()
        if not text.startswith("}", at) or text[at + 1 :].strip(" \t\n\r"):
            raise ValueError("not a plain envelope")
    except (ValueError, RecursionError):
        del items
        return parse_tasks(loads(body), max_batch)
    if count > max_batch:
        items += [None] * (count - max_batch)  # parse_tasks names the count and the limit
    return parse_tasks({"tasks": items}, max_batch)


def check_run_body(payload: Any) -> None:
    """``POST /task/<id>`` takes no parameters: an empty body, ``{}`` or ``null``."""
    if payload is None or payload == {}:
        return
    if isinstance(payload, dict):
        unknown = ", ".join(repr(k) for k in payload)
        raise ValidationError(
            f"unknown field(s) {unknown}: POST /task/<id> takes an empty body or {{}}"
        )
    raise ValidationError(
        f"POST /task/<id> takes an empty body or {{}}, got a JSON {_kind(payload)}"
    )


def check_id(task_id: str) -> str:
    """Return ``task_id`` if it is 24 lowercase hex characters, else raise ``ValidationError``."""
    if not is_valid_id(task_id):
        shown = task_id if len(task_id) <= 40 else task_id[:40] + "..."
        raise ValidationError(
            f"malformed task id {shown!r}: expected 24 lowercase hex characters, "
            "as in the '_id' of a task",
            field="id",
        )
    return task_id


#: Why a task is not running (``views.waiting`` over one read of the live schedulers).
Why = Callable[[Task], "dict[str, Any] | None"]


def encode_task(task: Task, why: Why) -> dict[str, Any]:
    """The JSON object of one task; run details appear once the task has run. ``why`` gives its
    ``waiting`` (``views.Live.waiting``, or ``views.waiting`` bound to a snapshot and a time)."""
    out: dict[str, Any] = {
        "_id": task.id,
        "party": task.party,
        "data": task.data,
        "timestamp": format_timestamp(task.timestamp),
        "created": format_timestamp(task.created),
        "attempts": task.attempts,
        "status": task.status.value,
        "is_recurring": task.is_recurring,
        "last_run_on": format_timestamp(task.last_run_on),
    }
    if task.started_on is not None:
        out["started_on"] = format_timestamp(task.started_on)
        out["result"] = task.result
    if task.completed_on is not None:
        out["completed_on"] = format_timestamp(task.completed_on)
    if task.last_error is not None:
        out["last_error"] = task.last_error
    out["waiting"] = why(task)
    return out


def encode_tasks(tasks: Sequence[Task], why: Why) -> list[dict[str, Any]]:
    """The JSON array of several tasks, in the given order."""
    if len(tasks) < 8:
        return [encode_task(task, why) for task in tasks]
    # A batch shares its ``created`` time and often its timestamps: format each value once.
    formatted: dict[datetime, str] = {}

    def fmt(value: datetime) -> str:
        text = formatted.get(value)
        if text is None:
            text = formatted[value] = value.isoformat(timespec="microseconds") + "Z"
        return text

    out = []
    for task in tasks:
        item = {
            "_id": task.id,
            "party": task.party,
            "data": task.data,
            "timestamp": fmt(task.timestamp),
            "created": fmt(task.created),
            "attempts": task.attempts,
            "status": task.status.value,
            "is_recurring": task.is_recurring,
            "last_run_on": format_timestamp(task.last_run_on),
            "waiting": why(task),
        }
        if task.started_on is not None or task.completed_on is not None or task.last_error:
            item = encode_task(task, why)
        out.append(item)
    return out


def dumps_tasks(tasks: Sequence[Task], why: Why) -> bytes:
    """``dumps(encode_tasks(tasks, why))``, written directly for a batch of tasks that have not run.

    A batched ``POST /tasks`` echoes every task it added, and encoding a thousand objects of nine
    fields cost as much as inserting them. Here what the tasks of a batch share (the party, the
    times, the status) is encoded once, and each task adds its id and its data.
    """
    if len(tasks) < 8 or _encode_chunks is None:
        return dumps(encode_tasks(tasks, why))
    heads: dict[str, str] = {}
    tails: dict[tuple[Any, ...], str] = {}
    parts = []
    for task in tasks:
        if task.started_on is not None or task.completed_on is not None or task.last_error:
            parts.append(_encode(encode_task(task, why)))
            continue
        head = heads.get(task.party)
        if head is None:
            head = heads[task.party] = ',"party":' + _encode_str(task.party) + ',"data":'
        # ``waiting`` of a task that has not run depends on its party and times only.
        shared = (task.timestamp, task.created, task.attempts, task.status, task.is_recurring,
                  task.last_run_on, task.party, task.run_at)  # fmt: skip
        tail = tails.get(shared)
        if tail is None:
            rest = {
                "timestamp": format_timestamp(task.timestamp),
                "created": format_timestamp(task.created),
                "attempts": task.attempts,
                "status": task.status.value,
                "is_recurring": task.is_recurring,
                "last_run_on": format_timestamp(task.last_run_on),
                "waiting": why(task),
            }
            tail = tails[shared] = "," + _encode(rest)[1:]
        data = "".join(_encode_chunks(task.data, 0))
        parts.append('{"_id":' + _encode_str(task.id) + head + data + tail)
    return ("[" + ",".join(parts) + "]").encode()


#: The fields of a run in progress in ``GET /schedulers``.
RUN_FIELDS = ("_id", "party", "since", "worker", "pid")


def encode_scheduler(record: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler's heartbeat record as ``GET /schedulers`` shows it."""
    runs = record.get("runs") or {}
    return {
        "id": record["id"],
        "host": record.get("host"),
        "pid": record.get("pid"),
        "started": record.get("started"),
        "heartbeat": format_timestamp(record["heartbeat"]),
        "workers": record.get("workers"),
        "concurrency": record.get("concurrency") or 1,
        "handlers": list(record.get("handlers") or []),
        "running": [
            {k: run[k] for k in RUN_FIELDS if k in run} for run in record.get("running") or []
        ],
        "runs": {party: dict(counts) for party, counts in runs.items()},
        "beat_every": record.get("beat_every") or BEAT_EVERY,
    }


def encode_page(tasks: Sequence[Task], limit: int, why: Why) -> dict[str, Any]:
    """A page of ``GET /tasks``: ``{"tasks": [...], "next": cursor or null}``.

    ``next`` is set when the page is full; pass it back as ``after`` for the next page (which may
    be empty).
    """
    cursor = encode_cursor(tasks[-1]) if len(tasks) == limit and tasks else None
    return {"tasks": encode_tasks(tasks, why), "next": cursor}


def encode_cursor(task: Task) -> str:
    """An opaque cursor for the position just after ``task`` in queue order."""
    ts, attempts, created, task_id = task.order_key
    return f"{to_micros(ts)}.{attempts}.{to_micros(created)}.{task_id}"


def decode_cursor(cursor: str) -> tuple[datetime, int, datetime, str]:
    """The queue-order key of an ``encode_cursor`` string; ``ValidationError`` when malformed."""
    parts = cursor.split(".")
    try:
        if len(parts) != 4 or not is_valid_id(parts[3]):
            raise ValueError
        # Each number fits a signed 64-bit column: at most 19 digits and a sign.
        if any(len(part) > 20 for part in parts[:3]):
            raise ValueError
        ts, attempts, created = int(parts[0]), int(parts[1]), int(parts[2])
        if not 0 <= attempts <= INT64_MAX:
            raise ValueError
        return (from_micros(ts), attempts, from_micros(created), parts[3])
    except (ValueError, OverflowError):
        raise ValidationError(
            f"malformed 'after' cursor {cursor[:80]!r}: pass the 'next' value of the previous page",
            field="after",
        ) from None


def parse_list_query(args: Mapping[str, Sequence[bytes]]) -> dict[str, Any]:
    """Turn the query of ``GET /tasks`` into keyword arguments of ``TaskQueue.list``.

    Accepts ``status``, ``party``, ``limit`` (1..1000, default 100) and ``after`` (a cursor);
    each at most once.
    """
    unknown = [name for name in args if name not in LIST_PARAMS]
    if unknown:
        raise ValidationError(
            f"unknown query parameter(s) {', '.join(map(repr, unknown))}; GET /tasks accepts "
            + ", ".join(LIST_PARAMS),
            field=unknown[0],
        )
    values: dict[str, str] = {}
    for name, raw in args.items():
        if len(raw) != 1:
            raise ValidationError(f"query parameter {name!r} is given {len(raw)} times", field=name)
        try:
            values[name] = raw[0].decode()
        except UnicodeDecodeError:
            raise ValidationError(f"query parameter {name!r} is not UTF-8", field=name) from None
    query: dict[str, Any] = {"limit": DEFAULT_PAGE}
    if "status" in values:
        if values["status"] not in ALL_STATUSES:
            raise ValidationError(
                f"unknown status {values['status']!r}; expected one of {', '.join(ALL_STATUSES)}",
                field="status",
            )
        query["status"] = values["status"]
    if "party" in values:
        query["party"] = values["party"]
    if "limit" in values:
        text = values["limit"]
        if not (text.isascii() and text.isdigit() and len(text) <= 4) or not (
            1 <= int(text) <= MAX_PAGE
        ):
            raise ValidationError(
                f"limit must be an integer 1..{MAX_PAGE}, got {text[:40]!r}", field="limit"
            )
        query["limit"] = int(text)
    if "after" in values:
        query["after"] = decode_cursor(values["after"])
    return query


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
