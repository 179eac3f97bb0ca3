"""The wire shape of the HTTP API: request bodies in, tasks and pages out, as JSON.

This module is the only one that knows what a request body or a task looks like on the wire: the
``{"tasks": [...]}`` envelope of ``POST /tasks`` and its limits, the task's JSON fields, the paging
cursor of ``GET /tasks`` and the filters it accepts. Everything it rejects is a ``ValidationError``
naming the item, the field and what is accepted. The shapes of what it parses and encodes are
declared in ``server.shapes``. It imports ``model``, ``errors``, ``timestamps``, ``admission``,
``views`` and ``server.shapes``; never tornado, a store or the queue, so it is tested as pure
functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..admission import check_items
from ..errors import ValidationError
from ..model import ALL_STATUSES, Task, is_valid_id
from ..storable import INT64_MAX
from ..timestamps import format_timestamp, from_micros, to_micros
from ..views import BEAT_EVERY
from .shapes import DEFAULT_PAGE, ITEM_FIELDS, LIST_PARAMS, MAX_PAGE

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
