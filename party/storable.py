"""What every store can keep: the input rules that task data and results obey on SQLite and MongoDB.

PRODUCT.md "Inputs every store keeps alike": integers within signed 64 bits, strings and keys that
are valid Unicode, keys without NUL that do not start with ``$``, at most ``MAX_DEPTH`` levels of
nesting, and a BSON encoding within ``MAX_BSON_BYTES``. One walk checks them all and measures the
BSON size as ``bson.encode`` would (without importing ``bson``, which lives in the Mongo store),
so the queue refuses the same input whatever the store. Imports nothing from Party.
"""

from __future__ import annotations

from typing import Any

#: Nesting levels a value may hold: the data object itself is level 1.
MAX_DEPTH = 100
#: The largest BSON encoding of a task's data (MongoDB's own limit for a document is 16 MiB).
MAX_BSON_BYTES = 15 * 1024 * 1024
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def storable_text(text: str) -> str:
    """``text`` with any lone surrogate written as its escape (``\\udce9``): an exception's
    message may hold one (a file name that is not UTF-8, through ``os.fsdecode``), and no store
    or JSON answer takes it. Stored as it was, it made every read of the task fail."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


class Unstorable(ValueError):
    """A value no store can keep. ``reason`` says why and ``path`` where (``data['a'][2]``)."""

    def __init__(self, reason: str, path: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps = path or []

    def where(self, root: str) -> str:
        """The location of the offending value below ``root`` (e.g. ``'data'``)."""
        path = root + "".join(reversed(self.steps))
        return path if len(path) <= 80 else path[:60] + "..." + path[-17:]

    def __str__(self) -> str:
        return self.reason


def document_size(doc: dict[str, Any], depth: int = 1) -> int:
    """The BSON size of ``doc`` (a dict of str keys), having checked every rule; or ``Unstorable``.

    ``depth`` is the nesting level of ``doc`` itself.
    """
    if depth > MAX_DEPTH:
        raise Unstorable(f"it is nested more than {MAX_DEPTH} levels deep")
    size = 5  # int32 length and the closing NUL
    for key, value in doc.items():
        if type(key) is not str:
            raise Unstorable(
                f"the key {key!r} is not accepted: keys must be strings", [f"[{key!r}]"]
            )
        if key.startswith("$") or "\0" in key:
            raise Unstorable(
                f"the key {_shown(key)} is not accepted: keys must not start with '$' or hold "
                "a NUL character",
                [f"[{_shown(key)}]"],
            )
        try:
            size += 2 + len(key.encode()) + _value_size(value, depth)  # type byte, key, NUL
        except UnicodeEncodeError:
            raise Unstorable(
                f"the key {_shown(key)} is not valid Unicode (a lone surrogate)",
                [f"[{_shown(key)}]"],
            ) from None
        except Unstorable as exc:
            exc.steps.append(f"[{_shown(key)}]")
            raise
    return size


def value_size(value: Any) -> int:
    """The BSON size of ``value`` as the value of one element (a result may be any JSON value)."""
    return _value_size(value, 0)


def _value_size(value: Any, depth: int) -> int:
    kind = type(value)
    if kind is str:
        try:
            return 5 + len(value.encode())
        except UnicodeEncodeError:
            raise Unstorable(
                f"the string {_shown(value)} is not valid Unicode (a lone surrogate)"
            ) from None
    if kind is int:
        if _INT32_MIN <= value <= _INT32_MAX:
            return 4
        if INT64_MIN <= value <= INT64_MAX:
            return 8
        raise Unstorable(
            f"the integer {_shown_int(value)} is outside the signed 64-bit range "
            f"{INT64_MIN}..{INT64_MAX}; send it as a string"
        )
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise Unstorable(f"{value!r} is not a JSON number")
        return 8
    if kind is bool:
        return 1
    if value is None:
        return 0
    if kind is dict:
        return document_size(value, depth + 1)
    if kind is list or kind is tuple:
        if depth + 1 > MAX_DEPTH:
            raise Unstorable(f"it is nested more than {MAX_DEPTH} levels deep")
        size = 5
        for index, item in enumerate(value):
            try:
                size += 2 + len(str(index)) + _value_size(item, depth + 1)
            except Unstorable as exc:
                exc.steps.append(f"[{index}]")
                raise
        return size
    if isinstance(value, str | int | float | dict | list | tuple):
        # A subclass (an IntEnum, an OrderedDict...): measured as the plain value it encodes as.
        plain = {str: str, int: int, float: float, dict: dict, list: list, tuple: list}
        base = next(b for b in plain if isinstance(value, b))
        return _value_size(plain[base](value), depth)
    raise Unstorable(f"a value of type {kind.__name__} is not a JSON value")


def _shown(text: str) -> str:
    shown = text if len(text) <= 40 else text[:40] + "..."
    return ascii(shown)


def _shown_int(value: int) -> str:
    digits = len(str(abs(value))) if value.bit_length() < 10_000 else None
    if digits is not None and digits <= 40:
        return str(value)
    return f"of {digits or 'thousands of'} digits"
