"""The wire's shapes: what crosses the HTTP API, declared once as JSON Schema.

Every request body, answer and query of the API as a ``Shape`` of ``Field``s (JSON Schema 2020-12,
as OpenAPI 3.1 takes it), the task's drawn from ``model.TASK_FIELDS``: ``server.openapi``
publishes them in ``GET /openapi.json``, the tests validate every answer against them, and
``server.wire``, which parses and encodes what they describe, takes its names and limits from
here. Declarations only: no parsing, no encoding. Imports ``model`` and ``views``; never tornado,
a store, the queue or the rest of ``server``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..model import ALL_STATUSES, TASK_FIELDS, FieldSpec, Kind, Wire
from ..views import REASONS

DEFAULT_PAGE = 100
MAX_PAGE = 1000

# What crosses the wire, declared once as JSON Schema (2020-12, as OpenAPI 3.1 takes it):
# ``server.openapi`` publishes these in ``GET /openapi.json`` and the tests validate every answer
# against them. A change to an encoder or a parser in ``server.wire`` changes its shape here.


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
