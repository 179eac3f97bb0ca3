"""The HTTP API under a fuzzer: schemathesis drives a live ``python -m party serve`` from the
OpenAPI document, operation by operation and then along the document's links.

Every answer must conform to the document (status, content type, headers, body), no answer is
a 5xx but a 503 (which says nothing was written), an answer that is not a success has written
nothing (the store's tasks are read before and after every request), and the server still
answers ``/health`` at the end. Bounded for ``make test`` (``PARTY_FUZZ_EXAMPLES``, 25 per
operation by default, a fixed seed); ``PARTY_FUZZ_EXAMPLES=2000 PARTY_FUZZ_RANDOM=1`` makes the
long exploratory run.
"""

import hashlib
import os
import sqlite3

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from party.server.openapi import document
from tests.serving import ServerProcess

pytestmark = pytest.mark.processes

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("PARTY_FUZZ_EXAMPLES", "25"))
RANDOM = bool(os.environ.get("PARTY_FUZZ_RANDOM"))

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {
            "max-examples": EXAMPLES,
            "deterministic": not RANDOM,
            "database": "none",
        },
    }
)
schema = schemathesis.openapi.from_dict(document(), config=CONFIG)


def no_bug_answer(ctx, response, case):
    """No 5xx but a 503 (the store, a worker or the server cannot serve now)."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code}, a bug: "
            f"{response.text[:500]}"
        )


CHECKS = [
    no_bug_answer,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def negated_headers(case):
    """True for a case meant to break the headers: schemathesis counts the bearer scheme as a
    required ``Authorization`` header, so such a case must go without the token (and get a 401)."""
    info = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    return info is not None and info.mode.is_negative


def known_handlers(case):
    """Name a handler the server has in most items of an add: a random name is only ever a 400,
    and the runs, gets and deletes that follow an add need tasks that exist."""
    if case.method != "POST" or case.path != "/tasks" or not isinstance(case.body, dict):
        return
    items = case.body.get("tasks")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and isinstance(item.get("party"), str):
            if len(item["party"]) % 4:
                item["party"] = "SampleTask"


class Fuzzed:
    """The server under the fuzzer and what it holds."""

    def __init__(self, server):
        self.server = server
        self.url = f"http://{server.host}:{server.port}"
        self.refusals = 0
        self.unavailable = 0

    def tasks(self):
        """A digest of every task row: any write shows."""
        uri = f"file:{self.server.store}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as db:
            digest = hashlib.sha256()
            for row in db.execute("SELECT * FROM tasks ORDER BY rowid"):
                digest.update(repr(row).encode())
        db.close()
        return digest.hexdigest()

    def call(self, case):
        """Send ``case`` and hold its answer to the checks and to the nothing-written rule."""
        known_handlers(case)
        before = self.tasks()
        headers = {} if negated_headers(case) else AUTH
        response = case.call(base_url=self.url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)
        if not 200 <= response.status_code < 300:
            self.refusals += 1
            self.unavailable += response.status_code == 503
            assert self.tasks() == before, (
                f"{case.method} {case.formatted_path} answered {response.status_code} "
                f"({response.text[:300]}) but the tasks changed"
            )
        return response


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "party.db", args=["--token", TOKEN])
    server.start(token=TOKEN)
    yield Fuzzed(server)
    assert server.stop() == 0, server.log()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_under_the_fuzzer(case, fuzzed):
    fuzzed.call(case)


def test_the_documented_workflows_under_the_fuzzer(fuzzed):
    """Add tasks, then follow the document's links: get, run and delete what was added."""
    workflow = schema.as_state_machine()

    class Workflow(workflow):
        def call(self, case, **kwargs):
            return fuzzed.call(case)

        def validate_response(self, response, case, **kwargs):
            pass  # done in call, with the nothing-written rule

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            max_examples=max(5, EXAMPLES * 3 // 5),
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=not RANDOM,
        ),
    )


def test_the_server_still_answers_health_after_the_fuzz(fuzzed):
    with fuzzed.server.client(token=TOKEN, timeout=5) as con:
        assert con("/health") == {"status": "ok"}
        stats = con("/stats")
    assert sum(stats["statuses"].values()) > 0, "the fuzzer added no task: it tested little"
