"""The inputs every store keeps alike (PRODUCT.md): one walk refuses what a store could not keep,
and measures the BSON size exactly as ``bson.encode`` does."""

import pytest

from party.admission import check_data
from party.errors import ValidationError
from party.storable import MAX_BSON_BYTES, MAX_DEPTH, Unstorable, document_size, value_size

bson = pytest.importorskip("bson")


def nested(levels):
    """An object of ``levels`` levels of nesting (itself included)."""
    value = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"a": 1, "b": -(1 << 31), "c": 1 << 31, "d": (1 << 63) - 1, "e": -(1 << 63)},
        {"s": "x\u00e9\u20ac\U0001f600", "f": 2.5, "t": True, "n": None},
        {"list": list(range(1000)), "deep": {"a": [{"b": [[], {}]}]}},
        {"\u00e9t\u00e9": "k" * 5000},
        nested(MAX_DEPTH),
    ],
)
def test_document_size_is_the_bson_size(doc):
    assert document_size(doc) == len(bson.encode(doc))


def test_value_size_of_a_result_is_its_element_value():
    for value in (1, "abc", [1, 2], {"a": 1}, 2.0, 1 << 40):
        assert value_size(value) + 2 + 5 + 1 == len(bson.encode({"r": value}))


@pytest.mark.parametrize(
    "data, where, words",
    [
        ({"a": "\ud800"}, "data['a']", "not valid Unicode"),
        ({"\udfff": 1}, "data['\\udfff']", "not valid Unicode"),
        ({"a": [1, {"$set": 1}]}, "data['a'][1]['$set']", "'$set' is not accepted"),
        ({"a\x00b": 1}, "data['a\\x00b']", "NUL"),
        ({"a": 1 << 63}, "data['a']", "outside the signed 64-bit range"),
        ({"a": -(1 << 63) - 1}, "data['a']", "outside the signed 64-bit range"),
        ({"a": 10**5000}, "data['a']", "outside the signed 64-bit range"),
        (nested(MAX_DEPTH + 1), "data['a']", "nested more than 100 levels"),
        ({"a": float("inf")}, "data['a']", "not a JSON number"),
        ({"a": {1, 2}}, "data['a']", "not a JSON value"),
    ],
)
def test_unstorable_values_are_named_with_their_place(data, where, words):
    with pytest.raises(Unstorable) as info:
        document_size(data)
    assert info.value.where("data").startswith(where)
    assert words in str(info.value)
    with pytest.raises(ValidationError) as refused:
        check_data(3, data)
    assert refused.value.index == 3 and refused.value.field == "data"
    assert words in str(refused.value)


def test_data_over_15_mib_of_bson_is_refused_and_just_under_is_kept():
    overhead = len(bson.encode({"s": ""}))
    fits = {"s": "x" * (MAX_BSON_BYTES - overhead)}
    assert document_size(fits) == MAX_BSON_BYTES == len(bson.encode(fits))
    check_data(0, fits)
    with pytest.raises(ValidationError, match="over the limit of 15728640"):
        check_data(0, {"s": "x" * (MAX_BSON_BYTES - overhead + 1)})


def test_deep_nesting_is_refused_without_a_recursion_error():
    with pytest.raises(ValidationError, match="nested more than 100"):
        check_data(0, nested(5000))


@pytest.mark.parametrize("kind", ["surrogate", "huge_int", "dollar_key", "too_big"])
def test_a_result_that_cannot_be_stored_fails_the_task_at_once(queue, kind):
    from party.runner import execute

    (task,) = queue.add([{"party": "UnstorableResult", "data": {"kind": kind}}])
    (claimed,) = queue.claim(1)
    outcome, status = execute(queue, claimed)
    assert status == "failed" and outcome.permanent
    stored = queue.get(task.id)
    assert stored.status == "failed" and stored.attempts == 1 and stored.result is None
    assert stored.last_error["type"] == "UnstorableResult"
    assert "UnstorableResult.run() cannot be stored" in stored.last_error["message"]
