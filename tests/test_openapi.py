"""The OpenAPI document: a valid 3.1 document, served as committed in docs/openapi.json, with an
entry for every route of the app and a shape for everything the encoders write."""

import json
from datetime import datetime

import pytest
from tornado.web import RequestHandler

from party.client import BlockingHTTPClient
from party.model import Status, Task
from party.queue import TaskQueue
from party.registry import discover
from party.server import openapi, shapes, wire
from party.server.app import make_app
from party.server.operations import OPERATIONS
from party.stores.sqlite import SqliteStore
from party.views import Live
from tests.serving import HANDLERS, ROOT, Contract, ServerThread, contract

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "regenerate it: python -m party.server.openapi docs/openapi.json"
METHODS = ("get", "post", "delete", "put", "patch")


def test_document_is_a_valid_openapi_3_1_document():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    validate(openapi.document(), cls=OpenAPIV31SpecValidator)


def test_committed_copy_is_the_document():
    committed = json.loads(COMMITTED.read_text())
    assert committed == openapi.document(), f"docs/openapi.json is stale; {REGENERATE}"
    assert COMMITTED.read_text() == openapi.document_text(), REGENERATE


def test_server_serves_the_committed_document(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token="t").start()
    try:
        with BlockingHTTPClient(server.sock, token="t") as con:
            served = con.request("/openapi.json")
    finally:
        server.stop()
    assert served == json.loads(COMMITTED.read_text())


@pytest.fixture
def app(tmp_path):
    queue = TaskQueue(SqliteStore(tmp_path / "party.db"), discover([str(HANDLERS)]))

    async def runner(task):
        return None

    yield make_app(queue, queue.registry, _settings(), runner)
    queue.store.close()


def _settings():
    from party.config import Settings

    return Settings()


def _served_methods(handler: type[RequestHandler]) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}


def _example_path(template):
    return template.replace("{id}", "0123456789abcdef01234567")


def test_every_route_of_the_app_has_its_operations_in_the_document(app):
    paths = openapi.document()["paths"]
    for rule in app.wildcard_router.rules:
        regex, handler = rule.matcher.regex, rule.target
        documented = [p for p in paths if regex.match(_example_path(p))]
        assert documented, (
            f"route {regex.pattern} ({handler.__name__}) has no entry in the document: "
            "add an Operation to party/server/operations.py OPERATIONS"
        )
        methods = {m for p in documented for m in paths[p]}
        assert methods == _served_methods(handler), (
            f"route {regex.pattern}: the document lists {sorted(methods)}, "
            f"{handler.__name__} serves {sorted(_served_methods(handler))}"
        )


def test_every_operation_of_the_document_has_a_route(app):
    rules = app.wildcard_router.rules
    for path, operations in openapi.document()["paths"].items():
        served = [r for r in rules if r.matcher.regex.match(_example_path(path))]
        assert served, f"{path} is in the document but no route of party/server/app.py serves it"
        for method in operations:
            assert method in _served_methods(served[0].target), f"{method.upper()} {path}"


def test_operations_have_unique_ids_and_every_shape_is_used():
    ids = [op.id for op in OPERATIONS]
    assert len(ids) == len(set(ids))
    text = json.dumps(openapi.document()["paths"]) + json.dumps(
        openapi.document()["components"]["schemas"]
    )
    for name in shapes.SHAPES:
        assert f'"#/components/schemas/{name}"' in text, f"shape {name} is declared but unused"


def test_the_list_query_and_item_fields_are_the_declared_ones():
    from party import admission

    assert shapes.LIST_PARAMS == ("status", "party", "limit", "after")
    assert shapes.ITEM_FIELDS == admission.ITEM_FIELDS, "admission checks the fields wire declares"
    params = openapi.document()["paths"]["/tasks"]["get"]["parameters"]
    assert [p["name"] for p in params] == list(shapes.LIST_PARAMS)


def _task(**changes):
    when = datetime(2014, 3, 11, 5, 12, 22, 86400)
    fields = dict(
        id="0123456789abcdef01234567",
        party="Noop",
        data={"a": 1},
        timestamp=when,
        created=when,
        run_at=when,
    )
    fields.update(changes)
    return Task(**fields)


WHY = Live(at=datetime(2030, 1, 1)).waiting
TASKS = [
    _task(),
    _task(status=Status.RUNNING, attempts=1, started_on=datetime(2030, 1, 1)),
    _task(
        status=Status.COMPLETED,
        attempts=1,
        is_recurring=True,
        last_run_on=datetime(2029, 1, 1),
        started_on=datetime(2030, 1, 1),
        completed_on=datetime(2030, 1, 1, 0, 0, 1),
        result={"any": ["json", 1, None]},
    ),
    _task(
        status=Status.FAILED,
        attempts=6,
        started_on=datetime(2030, 1, 1),
        completed_on=datetime(2030, 1, 1, 0, 0, 1),
        last_error={
            "type": "ValueError",
            "message": "no",
            "traceback": None,
            "at": "2030-01-01T00:00:01.000000Z",
        },
    ),  # fmt: skip
]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.status.value)
def test_encoded_tasks_of_every_kind_match_the_task_shape(task):
    check = contract().violation
    body = wire.dumps(wire.encode_task(task, WHY))
    assert check("GET", "/task/" + task.id, 200, "application/json", body) is None
    many = wire.dumps_tasks([task] * 10, WHY)
    assert check("POST", "/tasks", 201, "application/json", many) is None
    page = wire.dumps(wire.encode_page([task] * 3, 3, WHY))
    assert check("GET", "/tasks", 200, "application/json", page) is None


def test_the_task_shape_follows_the_model_table_with_a_meaning_for_each_field():
    from party.model import TASK_FIELDS, Wire

    shown = [spec for spec in TASK_FIELDS if spec.wire is not Wire.NEVER]
    assert [spec.wire_name for spec in shown] == list(shapes.TASK.fields)[: len(shown)]
    missing = [spec.name for spec in shown if not shapes.TASK_DOCS.get(spec.name)]
    assert not missing, f"say what {missing} mean in party/server/shapes.py TASK_DOCS"


def test_the_task_shape_declares_every_field_the_encoder_writes():
    written = set()
    for task in TASKS:
        written |= set(wire.encode_task(task, WHY))
    assert written == set(shapes.TASK.fields)


def test_the_contract_catches_an_answer_that_drifts():
    check = Contract(openapi.document()).violation
    task = wire.encode_task(TASKS[0], WHY)
    ok = json.dumps(task).encode()
    assert check("GET", "/task/" + task["_id"], 200, "application/json", ok) is None
    undeclared = json.dumps({**task, "surprise": 1}).encode()
    assert "surprise" in check("GET", "/task/x", 200, "application/json", undeclared)
    missing = json.dumps({k: v for k, v in task.items() if k != "status"}).encode()
    assert "status" in check("GET", "/task/x", 200, "application/json", missing)
    assert "does not list" in check("GET", "/stats", 500, "application/json", b'{"error":"x"}')
    assert "not JSON" in check("GET", "/stats", 200, "text/html", b"<html>")
    assert check("GET", "/nowhere", 404, "application/json", b'{"error":"no"}') is None
    assert check("PUT", "/tasks", 405, "application/json", b'{"error":"no"}') is None
    assert "breaks" in check("GET", "/nowhere", 404, "application/json", b'{"error": 1}')
