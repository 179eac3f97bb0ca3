"""The wire shape, as pure functions: request checks, task encoding, the paging cursor."""

import json
from datetime import datetime

import pytest

from party.errors import ValidationError
from party.model import Status, Task
from party.server import wire
from party.views import Live

ID = "0123456789abcdef01234567"
#: ``waiting`` as of 2020 with one live scheduler that has the handler Noop.
WHY = Live(at=datetime(2020, 1, 1), schedulers=({"id": "s", "handlers": ["Noop"]},)).waiting


def make_task(**changes):
    fields = dict(
        id=ID,
        party="Noop",
        data={"a": 1},
        timestamp=datetime(2014, 3, 11, 5, 12, 22, 86400),
        created=datetime(2030, 1, 1, 12, 0, 0),
        run_at=datetime(2014, 3, 11, 5, 12, 22, 86400),
    )
    fields.update(changes)
    return Task(**fields)


def test_queued_task_has_the_contract_fields_and_no_run_details():
    out = wire.encode_task(make_task(), WHY)
    assert out.pop("waiting")["reason"] == "due"
    assert out == {
        "_id": ID,
        "party": "Noop",
        "data": {"a": 1},
        "timestamp": "2014-03-11T05:12:22.086400Z",
        "created": "2030-01-01T12:00:00.000000Z",
        "attempts": 0,
        "status": "queued",
        "is_recurring": False,
        "last_run_on": None,
    }


def test_run_details_appear_once_known():
    error = {"type": "RuntimeError", "message": "boom", "traceback": "tb", "at": "x"}
    task = make_task(
        status=Status.FAILED,
        attempts=6,
        started_on=datetime(2030, 1, 1, 12, 0, 1),
        completed_on=datetime(2030, 1, 1, 12, 0, 2),
        last_error=error,
        lease="secret",
        singleton="k",
    )
    out = wire.encode_task(task, WHY)
    assert out["started_on"] == "2030-01-01T12:00:01.000000Z"
    assert out["completed_on"] == "2030-01-01T12:00:02.000000Z"
    assert out["result"] is None and out["last_error"] == error
    assert "lease" not in out and "singleton" not in out and "run_at" not in out


def test_dumps_is_compact_json():
    assert wire.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{", "not valid JSON"),
        (b'"\x80"', "not UTF-8"),
    ],
)
def test_loads_says_why_a_body_is_not_json(body, words):
    with pytest.raises(ValidationError, match=words):
        wire.loads(body)


def test_empty_body_is_none():
    assert wire.loads(b"") is None and wire.loads(b" \n") is None


@pytest.mark.parametrize(
    "payload, index, words",
    [
        (None, None, "got an empty body"),
        ([{"party": "Noop"}], None, "got a JSON array"),
        ({}, None, 'no "tasks" field'),
        ({"tasks": [], "extra": 1}, None, "unknown field"),
        ({"tasks": {"party": "Noop"}}, None, "must be a JSON array"),
        ({"tasks": []}, None, "is empty"),
        ({"tasks": ["Noop"]}, 0, "expected a task object"),
        ({"tasks": [{"party": "Noop"}, {"party": "Noop", "when": 1}]}, 1, "unknown field"),
        ({"tasks": [{"data": {}}]}, 0, "'party' is missing"),
    ],
)
def test_parse_tasks_refuses_bad_envelopes_and_items(payload, index, words):
    with pytest.raises(ValidationError, match=words) as info:
        wire.parse_tasks(payload, max_batch=10)
    assert info.value.index == index


def test_parse_tasks_names_the_batch_limit():
    with pytest.raises(ValidationError, match="11 tasks .* limit of 10"):
        wire.parse_tasks({"tasks": [{"party": "Noop"}] * 11}, max_batch=10)


def test_parse_tasks_returns_the_items_unchanged():
    items = [{"party": "Noop", "data": {"x": 1}, "timestamp": 0}]
    assert wire.parse_tasks({"tasks": items}, max_batch=1) is items


@pytest.mark.parametrize("payload", [None, {}])
def test_run_body_may_be_empty_or_an_empty_object(payload):
    wire.check_run_body(payload)


@pytest.mark.parametrize("payload", [{"now": True}, [], "x"])
def test_run_body_refuses_anything_else(payload):
    with pytest.raises(ValidationError, match="empty body or"):
        wire.check_run_body(payload)


@pytest.mark.parametrize("bad", ["", "123", ID.upper(), ID + "0", "g" * 24, "x" * 500])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(ValidationError, match="24 lowercase hex"):
        wire.check_id(bad)


def test_cursor_round_trips_the_queue_order_key():
    task = make_task(attempts=3)
    assert wire.decode_cursor(wire.encode_cursor(task)) == task.order_key


@pytest.mark.parametrize("bad", ["", "1.2.3", "a.b.c." + ID, "1.2.3.nothex", "1.2.3.4." + ID])
def test_malformed_cursor_is_refused(bad):
    with pytest.raises(ValidationError, match="'next' value"):
        wire.decode_cursor(bad)


def test_page_has_next_only_when_full():
    tasks = [make_task()]
    assert wire.encode_page(tasks, 2, WHY)["next"] is None
    page = wire.encode_page(tasks, 1, WHY)
    assert page["next"] == wire.encode_cursor(tasks[0])
    assert json.loads(wire.dumps(page))["tasks"][0]["_id"] == ID


def test_list_query_defaults_and_values():
    assert wire.parse_list_query({}) == {"limit": 100}
    query = wire.parse_list_query({"status": [b"queued"], "party": [b"Noop"], "limit": [b"5"]})
    assert query == {"status": "queued", "party": "Noop", "limit": 5}


@pytest.mark.parametrize(
    "args, words",
    [
        ({"state": [b"queued"]}, "unknown query parameter"),
        ({"status": [b"done"]}, "unknown status 'done'; expected one of queued"),
        ({"limit": [b"0"]}, "limit must be an integer 1..1000"),
        ({"limit": [b"1001"]}, "limit must be"),
        ({"limit": [b"ten"]}, "limit must be"),
        ({"limit": [b"1", b"2"]}, "given 2 times"),
        ({"after": [b"nope"]}, "malformed 'after' cursor"),
    ],
)
def test_list_query_refuses_bad_filters(args, words):
    with pytest.raises(ValidationError, match=words):
        wire.parse_list_query(args)
