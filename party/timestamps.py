"""Time in Party: naive UTC datetimes inside, ISO 8601 strings on the wire.

This module is the one parser and formatter of timestamps. Input may be a datetime (an aware one is
converted to UTC), an ISO 8601 string with or without an offset (naive means UTC), extended JSON
``{"$date": ...}`` or epoch seconds. Imports only the standard library and python-dateutil.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1)
ONE_MICROSECOND = timedelta(microseconds=1)

# Bounds keep epoch arithmetic and both stores (BSON int64 milliseconds, SQLite int64 microseconds)
# safe, and turn typos such as an epoch in milliseconds passed as seconds into a clear error.
MIN_TIMESTAMP = datetime(1970, 1, 1)
MAX_TIMESTAMP = datetime(9999, 12, 31, 23, 59, 59)

ACCEPTED = (
    "an ISO 8601 string such as '2014-03-11T05:12:22.086400' (UTC) or with an offset "
    "'2014-03-11T10:42:22+05:30', epoch seconds, or {\"$date\": ...}"
)


def system_now() -> datetime:
    """Return the current time as a naive UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(0, 0, time.time_ns() // 1000)  # half the cost of now(UTC) + replace


def to_utc(value: datetime) -> datetime:
    """Return ``value`` as naive UTC: aware datetimes are converted, naive ones are taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_timestamp(value: Any) -> datetime:
    """Parse any accepted timestamp input into a naive UTC datetime.

    Raises ValueError with a message saying what was wrong and what is accepted.
    """
    if isinstance(value, datetime):
        result = to_utc(value)
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"got {value!r}; expected {ACCEPTED}")
    elif isinstance(value, int | float):
        result = _from_epoch_seconds(float(value))
    elif isinstance(value, str):
        result = _parse_iso(value)
    elif isinstance(value, dict) and set(value) == {"$date"}:
        result = _parse_extended_json(value["$date"])
    else:
        raise ValueError(f"got {type(value).__name__} {value!r}; expected {ACCEPTED}")
    if not MIN_TIMESTAMP <= result <= MAX_TIMESTAMP:
        raise ValueError(f"{format_timestamp(result)} is outside 1970-01-01 .. 9999-12-31")
    return result


def _parse_iso(text: str) -> datetime:
    # Imported here: dateutil.parser costs about 15 ms to import and only string input needs it,
    # which the scheduler and its workers do not see (stores hand them datetimes).
    from dateutil.parser import isoparse

    try:
        parsed = isoparse(text.strip())
    except (ValueError, OverflowError) as exc:
        raise ValueError(
            f"{text!r} is not an ISO 8601 timestamp ({exc}); expected {ACCEPTED}"
        ) from None
    return to_utc(parsed)


def _from_epoch_seconds(seconds: float) -> datetime:
    if not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a finite number of epoch seconds")
    try:
        return EPOCH + timedelta(microseconds=round(seconds * 1_000_000))
    except OverflowError:
        raise ValueError(f"{seconds!r} epoch seconds is out of range") from None


def _parse_extended_json(inner: Any) -> datetime:
    # Extended JSON: {"$date": "<ISO>"}, {"$date": <ms>}, {"$date": {"$numberLong": "<ms>"}}.
    if isinstance(inner, dict) and set(inner) == {"$numberLong"}:
        inner = inner["$numberLong"]
        try:
            inner = int(inner)
        except (TypeError, ValueError):
            raise ValueError(f'{{"$numberLong": {inner!r}}} is not an integer') from None
    if isinstance(inner, str):
        return _parse_iso(inner)
    if isinstance(inner, int | float) and not isinstance(inner, bool):
        return _from_epoch_seconds(inner / 1000.0)
    raise ValueError(f'{{"$date": {inner!r}}} must hold an ISO string or epoch milliseconds')


def format_timestamp(value: datetime | None) -> str | None:
    """Format a naive UTC datetime for the wire: ISO 8601 with microseconds and a ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="microseconds") + "Z"


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch of a naive UTC datetime (the SQLite store's column type)."""
    return (value - EPOCH) // ONE_MICROSECOND


def from_micros(
    value: int, _epoch: datetime = EPOCH, _delta: type[timedelta] = timedelta
) -> datetime:
    """The naive UTC datetime of ``to_micros``."""
    return _epoch + _delta(0, 0, value)  # positional and bound early: this runs per task


def round_up_to_millis(value: datetime) -> datetime:
    """Round up to the next millisecond (BSON precision), so no task starts before its time."""
    extra = value.microsecond % 1000
    return value if not extra else value + timedelta(microseconds=1000 - extra)
