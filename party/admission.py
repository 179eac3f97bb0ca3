"""What a new task item must look like before the queue reads its values, whichever way it came in.

``POST /tasks`` (``server.wire.parse_tasks``) and the in-process handle (``party.open``) both call
``check_items`` on the items of a batch, so an item is refused with one message whether it came
over HTTP or from Python: an item is an object of only ``party``, ``data`` and ``timestamp``, with
``party`` present. The values (a known handler, storable data, a timestamp) are then checked by
``TaskQueue.add``, also shared. What is only about a request (JSON, the envelope, the batch size
limit) stays in ``server.wire``. Imports ``errors`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ValidationError

#: The fields of one item of a batch (``POST /tasks`` and ``add_many``).
ITEM_FIELDS = ("party", "data", "timestamp")
_FIELDS = frozenset(ITEM_FIELDS)


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
