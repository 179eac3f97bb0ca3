from datetime import UTC, datetime, timedelta, timezone

import pytest

from party.timestamps import (
    format_timestamp,
    from_micros,
    parse_timestamp,
    round_up_to_millis,
    system_now,
    to_micros,
)

EXPECTED = datetime(2014, 3, 11, 5, 12, 22, 86400)


@pytest.mark.parametrize(
    "value",
    [
        EXPECTED,
        EXPECTED.replace(tzinfo=UTC),
        EXPECTED.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-7))),
        "2014-03-11T05:12:22.086400",
        "2014-03-11T05:12:22.086400Z",
        "2014-03-11 05:12:22.0864",
        "2014-03-11T10:42:22.086400+05:30",
        {"$date": "2014-03-11T05:12:22.086400Z"},
        1394514742.0864,
    ],
)
def test_every_accepted_form_parses_to_naive_utc(value):
    assert parse_timestamp(value) == EXPECTED


def test_extended_json_milliseconds_forms():
    ms = 1394514742086
    expected = datetime(2014, 3, 11, 5, 12, 22, 86000)
    assert parse_timestamp({"$date": ms}) == expected
    assert parse_timestamp({"$date": {"$numberLong": str(ms)}}) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("tomorrow", "not an ISO 8601 timestamp"),
        (True, "expected an ISO 8601"),
        (None, "expected an ISO 8601"),
        ([2014, 3, 11], "expected an ISO 8601"),
        ({"$date": []}, "must hold an ISO string"),
        ({"date": "2014-01-01"}, "expected an ISO 8601"),
        (float("inf"), "not a finite number"),
        (1e20, "out of range"),
        (-5, "outside 1970-01-01"),
    ],
)
def test_bad_timestamps_say_what_is_accepted(value, message):
    with pytest.raises(ValueError, match=message):
        parse_timestamp(value)


def test_wire_format_is_iso_with_microseconds_and_z():
    assert format_timestamp(EXPECTED) == "2014-03-11T05:12:22.086400Z"
    assert format_timestamp(datetime(2014, 3, 11)) == "2014-03-11T00:00:00.000000Z"
    assert parse_timestamp(format_timestamp(EXPECTED)) == EXPECTED
    assert format_timestamp(None) is None


def test_micros_round_trip():
    assert from_micros(to_micros(EXPECTED)) == EXPECTED


def test_round_up_to_millis_never_goes_earlier():
    assert round_up_to_millis(EXPECTED) == datetime(2014, 3, 11, 5, 12, 22, 87000)
    exact = datetime(2014, 3, 11, 5, 12, 22, 86000)
    assert round_up_to_millis(exact) == exact


def test_system_now_is_naive_utc():
    now = system_now()
    assert now.tzinfo is None
    assert abs(now - datetime.now(UTC).replace(tzinfo=None)) < timedelta(seconds=1)
