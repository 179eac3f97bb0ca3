"""What a new task must be before the queue adds it, whichever way it came in.

``POST /tasks`` (``server.wire.parse_tasks``) and the in-process handle (``party.open``) both call
``check_items`` on the items of a batch, so an item is refused with one message whether it came
over HTTP or from Python: an item is an object of only ``party``, ``data`` and ``timestamp``, with
``party`` present. ``TaskQueue.add`` then turns each item into a ``Task`` with ``new_task``,
which checks its values (a known handler, storable data, a timestamp), and both ways check an
idempotency key with ``check_key``. What is only about a request (JSON, the envelope, the batch
size limit) stays in ``server.wire``; what the queue writes, in ``queue``. Imports ``errors``,
``model``, ``registry``, ``storable`` and ``timestamps``; never a store, the queue or the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .errors import ValidationError
from .model import NewTask, Task, new_id, singleton_key
from .registry import Registry
from .storable import MAX_BSON_BYTES, Unstorable, document_size
from .timestamps import parse_timestamp

#: The fields of one item of a batch (``POST /tasks`` and ``add_many``).
ITEM_FIELDS = ("party", "data", "timestamp")
_FIELDS = frozenset(ITEM_FIELDS)
#: An idempotency key: 1 to 255 visible ASCII characters.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def check_items(items: Sequence[Any]) -> None:
    """Raise ``ValidationError`` (with ``index`` and ``field``) for the first item that is not an
    object of only the known fields with ``party`` present; return None when all are."""
    for index, item in enumerate(items):
        if type(item) is not dict or not item.keys() <= _FIELDS or "party" not in item:
            check_item(index, item)  # says what is wrong (or passes a Mapping of another type)


def check_item(index: int, item: Any) -> None:
    """``check_items`` for the one item at ``index``."""
    if type(item) is not dict and not isinstance(item, Mapping):  # dict first: the usual case
        raise ValidationError(
            f"item {index}: expected a task object "
            f'{{"party": ..., "data": {{}}, "timestamp": ...}}, got {_kind(item)}',
            index=index,
        )
    if not item.keys() <= _FIELDS:
        unknown = [k for k in item if k not in _FIELDS]
        raise ValidationError(
            f"item {index}: unknown field(s) {', '.join(map(repr, unknown))}; a task has only "
            + ", ".join(ITEM_FIELDS),
            index=index,
            field=str(unknown[0]),
        )
    if "party" not in item:
        raise ValidationError(
            f"item {index}: 'party' is missing; it names the handler to run (a class name)",
            index=index,
            field="party",
        )


def _kind(value: Any) -> str:
    """What a value is, in JSON's words when it is a JSON value (the HTTP answer's wording)."""
    if value is None:
        return "a JSON null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, int | float):
        return "a JSON number"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, list | tuple):
        return "a JSON array"
    return f"a {type(value).__name__}"


def new_task(
    registry: Registry, index: int, item: NewTask | Mapping[str, Any], now: datetime
) -> Task:
    """The task of item ``index`` of a batch added at ``now``, or ``ValidationError`` naming what
    is wrong with it: a handler ``registry`` knows, storable data, a timestamp."""
    schedule = None
    if isinstance(item, NewTask):
        party, data, when, schedule = item.party, item.data, item.timestamp, item.schedule
    else:
        party, data, when = item.get("party"), item.get("data"), item.get("timestamp")
    if not isinstance(party, str) or not party:
        raise ValidationError(
            f"item {index}: 'party' must be the name of a handler (a string), got {party!r}",
            index=index,
            field="party",
        )
    handler = registry.get(party)
    if handler is None:
        known = ", ".join(registry.names) or "none are registered"
        raise ValidationError(
            f"item {index}: unknown handler {party!r}; known handlers: {known}",
            index=index,
            field="party",
        )
    if data is None:
        data = {}
    else:
        check_data(index, data)
    if when is None:
        timestamp = now
    else:
        try:
            timestamp = parse_timestamp(when)
        except OverflowError:  # an offset that moves a time past 0001 or 9999
            raise ValidationError(
                f"item {index}: bad 'timestamp': {when!r} is outside 1970-01-01 .. 9999-12-31",
                index=index,
                field="timestamp",
            ) from None
        except ValueError as exc:
            raise ValidationError(
                f"item {index}: bad 'timestamp': {exc}", index=index, field="timestamp"
            ) from None
    recurring = bool(handler.is_recurring)
    return Task(
        id=new_id(),
        party=party,
        data=data,
        timestamp=timestamp,
        created=now,
        run_at=timestamp,
        is_recurring=recurring,
        singleton=singleton_key(party, data) if recurring else None,
        schedule=schedule,
    )


def check_data(index: int, data: Any) -> None:
    """Raise ``ValidationError`` (naming item ``index``) unless ``data`` is an object every store
    can keep (``storable``: 64-bit integers, valid Unicode, keys without NUL or a leading '$',
    at most 100 levels, 15 MiB of BSON)."""
    if not isinstance(data, dict):
        raise ValidationError(
            f"item {index}: 'data' must be a JSON object (a dict), got {type(data).__name__}",
            index=index,
            field="data",
        )
    try:
        size = document_size(data)
    except Unstorable as exc:
        raise ValidationError(
            f"item {index}: 'data' must hold only JSON values every store can keep; "
            f"{exc.where('data')}: {exc}",
            index=index,
            field="data",
        ) from None
    if size > MAX_BSON_BYTES:
        raise ValidationError(
            f"item {index}: 'data' takes {size} bytes as BSON, over the limit of "
            f"{MAX_BSON_BYTES} (15 MiB); keep large payloads elsewhere and pass a reference",
            index=index,
            field="data",
        )


def check_key(key: object) -> str:
    """``key`` if it is an idempotency key (``IDEMPOTENCY_KEY``), else ``ValidationError``."""
    if not isinstance(key, str) or IDEMPOTENCY_KEY.fullmatch(key) is None:
        shown = key[:40] + "..." if isinstance(key, str) and len(key) > 40 else key
        raise ValidationError(
            f"malformed Idempotency-Key {shown!r}: expected 1 to 255 visible ASCII characters "
            "(no spaces), such as a UUID",
            field="idempotency_key",
        )
    return key
