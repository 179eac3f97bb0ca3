import os
import pickle
from datetime import datetime

import pytest

from party.model import Status, Task, canonical_json, is_valid_id, new_id, singleton_key


def test_task_survives_a_pickle_round_trip_with_every_field_set():
    at = datetime(2030, 1, 2, 3, 4, 5, 678901)
    task = Task(new_id(), "Noop", {"a": [1, {"b": None}]}, at, at, at, 3, Status.RUNNING, True,
                at, at, at, {"r": 1.5}, {"type": "E"}, "tok", at, "Noop:abc")  # fmt: skip
    copy = pickle.loads(pickle.dumps(task))
    assert copy == task and copy.status is Status.RUNNING


def test_task_with_unset_times_survives_a_pickle_round_trip():
    at = datetime(2030, 1, 1)
    task = Task(new_id(), "Noop", {}, at, at, at)
    assert pickle.loads(pickle.dumps(task)) == task


def test_singleton_key_ignores_key_order_but_not_values():
    assert canonical_json({"b": 1, "a": [2, 1]}) == '{"a":[2,1],"b":1}'
    assert singleton_key("P", {"a": 1, "b": 2}) == singleton_key("P", {"b": 2, "a": 1})
    assert singleton_key("P", {"a": 1}) != singleton_key("P", {"a": 2})
    assert singleton_key("P", {"a": 1}) != singleton_key("Q", {"a": 1})


def test_ids_are_24_lowercase_hex():
    assert is_valid_id(new_id())
    assert (
        not is_valid_id("6B05323E6E0945D502B5A7F6")
        and not is_valid_id("abc")
        and not is_valid_id(5)
        and not is_valid_id(new_id() + "\n")  # `$` alone matches before a final newline
    )


@pytest.mark.processes
def test_forked_child_draws_ids_of_its_own():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 24).decode()
    os.close(read)
    os.close(write)
    assert is_valid_id(child) and child[8:18] != new_id()[8:18]


def test_the_field_table_declares_every_task_field_in_order():
    from dataclasses import fields

    from party.model import FIELD, FIELD_KINDS, REQUIRED, TASK_FIELDS, Kind, Wire

    assert [spec.name for spec in TASK_FIELDS] == [f.name for f in fields(Task)]
    assert FIELD_KINDS["timestamp"] is Kind.TIME and FIELD_KINDS["data"] is Kind.JSON
    assert FIELD["id"].wire_name == "_id" and FIELD["lease"].wire is Wire.NEVER
    assert [s.name for s in TASK_FIELDS if s.required] == [
        "id", "party", "data", "timestamp", "created", "run_at"
    ]  # fmt: skip
    assert FIELD["attempts"].default == 0 and FIELD["party"].default is REQUIRED
    assert {s.name for s in TASK_FIELDS if s.not_before} == {"timestamp", "run_at"}
    for spec in TASK_FIELDS:  # a nullable field defaults to None; a defaulted one is never required
        assert not spec.nullable or spec.default is None
