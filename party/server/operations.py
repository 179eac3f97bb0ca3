"""The table of the HTTP API's endpoints: every method on every path, what it takes and what it
answers, as ``Operation``s and ``Answer``s naming the shapes of ``server.shapes``.

``OPERATIONS`` (with the dashboard's pages, ``DASHBOARD``) is the one list of endpoints: adding one
is a route in ``app`` plus an ``Operation`` here (tests/test_openapi.py fails on a route without
one, and on an entry without a route); ``server.openapi`` renders the table into the OpenAPI
document, and the 404 answer lists it. Declarations only. Imports ``server.shapes``; never
tornado, a store, the queue or the rest of ``server``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import shapes
from .shapes import Field


@dataclass(frozen=True)
class Answer:
    """One answer of an operation: JSON of the shape named ``shape`` (an array of them when
    ``array``), headers it carries (name -> description) and links to operations it leads to.
    ``media`` other than JSON (``{type: description}``) is a text answer instead (the metrics,
    the dashboard's HTML)."""

    description: str
    shape: str = "Error"
    array: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    media: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One method on one path. ``path`` is an OpenAPI template (``/task/{id}``, its parameters
    in ``PATH_PARAMS``); an answer given as a string is an error (the ``Error`` shape). ``body``
    names the request's shape; ``token``: refused without the token when the server has one."""

    method: str
    path: str
    id: str
    summary: str
    answers: Mapping[int, Answer | str]
    description: str = ""
    body: str | None = None
    body_required: bool = True
    query: Mapping[str, Field] = field(default_factory=dict)
    token: bool = True
    #: Request headers the operation reads (name -> what it means).
    headers: Mapping[str, Field] = field(default_factory=dict)


#: Parameters of the paths, by the name the templates give them.
PATH_PARAMS: Mapping[str, Field] = {
    "id": Field(shapes.TASK_ID, "the task's '_id' (24 lowercase hex characters)"),
    "file": Field({"type": "string"}, "a file of the dashboard's static folder"),
    # The dashboard's task pages take any text (a malformed id is a page saying so).
    "task": Field({"type": "string"}, "the task's '_id'"),
}

#: Answers any request may get (401 only where the token is needed).
UNAUTHORIZED = Answer(
    "The server has a token and the request did not carry it: send 'Authorization: Bearer "
    "<token>'.",
    headers={"WWW-Authenticate": 'Bearer realm="party"'},
)
FORBIDDEN = (
    "A server without a token answers only requests addressed to a loopback name (Host), and "
    "refuses a state change from a web page of another origin (Origin)."
)
TOO_LARGE = "The request body is over --max-body (PARTY_MAX_BODY, 8 MiB by default)."
UNAVAILABLE = (
    "The store or a worker is unavailable, or the server is stopping: nothing was written; "
    "try again later. Never an answer to bad input."
)

_BY_ID = {"id": "$response.body#/_id"}
_TASK_LINKS = {
    "GetTask": {"operationId": "getTask", "parameters": _BY_ID},
    "RunTask": {"operationId": "runTask", "parameters": _BY_ID},
    "DeleteTask": {"operationId": "deleteTask", "parameters": _BY_ID},
}
_FIRST_ID = {"id": "$response.body#/0/_id"}

_HTML = {"text/html": "an HTML page"}
_PAGE = {200: Answer("The page.", media=_HTML), 400: Answer("A malformed id.", media=_HTML),
         404: Answer("No such task.", media=_HTML),
         303: Answer("No session: to /ui/login.", media=_HTML,
                     headers={"Location": "/ui/login"})}  # fmt: skip
_NOT_A_FORM = Answer("A body that is not a form (or a malformed id).", media=_HTML)
_ACTION = {303: Answer("Done: to the page that shows the result.", media=_HTML,
           headers={"Location": "the next page"}),
           400: _NOT_A_FORM,
           401: Answer("No session.", media=_HTML)}  # fmt: skip
_UI = "A page of the web dashboard (HTML for a browser; the session cookie stands for the token)."
#: The dashboard's pages (``server.dashboard``): HTML, behind the session cookie, not for scripts.
DASHBOARD: tuple[Operation, ...] = (
    Operation(
        "get",
        "/ui/login",
        "dashboardLogin",
        "The login form",
        {200: Answer("The form.", media=_HTML)},
        description=_UI,
        token=False,
    ),  # fmt: skip
    Operation(
        "post",
        "/ui/login",
        "dashboardLogIn",
        "Log in with the token",
        {
            303: Answer(
                "Logged in: the session cookie (HttpOnly, SameSite=Strict) is set.", media=_HTML
            ),
            400: Answer("A body that is not a form.", media=_HTML),
            401: Answer("A wrong token.", media=_HTML),
        },
        description=_UI,
        token=False,
    ),  # fmt: skip
    Operation(
        "post", "/ui/logout", "dashboardLogOut", "Log out", _ACTION, description=_UI, token=False
    ),  # fmt: skip
    Operation(
        "get", "/ui/tasks", "dashboardTasks", "The task list", _PAGE, description=_UI, token=False
    ),  # fmt: skip
    Operation(
        "get", "/ui/task/{task}", "dashboardTask", "One task", _PAGE, description=_UI, token=False
    ),  # fmt: skip
    Operation(
        "post",
        "/ui/task/{task}/run",
        "dashboardRun",
        "Run now",
        _ACTION,
        description=_UI,
        token=False,
    ),  # fmt: skip
    Operation(
        "post",
        "/ui/task/{task}/delete",
        "dashboardDelete",
        "Delete",
        _ACTION,
        description=_UI,
        token=False,
    ),  # fmt: skip
    Operation(
        "get",
        "/ui/schedulers",
        "dashboardSchedulers",
        "The live schedulers",
        _PAGE,
        description=_UI,
        token=False,
    ),  # fmt: skip
    Operation(
        "get",
        "/ui/static/{file}",
        "dashboardStatic",
        "The dashboard's CSS and script",
        {
            200: Answer(
                "The file.",
                media={"text/css": "the stylesheet", "application/javascript": "the script"},
            ),
            404: Answer("No such file.", media=_HTML),
        },
        token=False,
    ),  # fmt: skip
)

#: Every endpoint, in the order the document lists them.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/tasks",
        "addTasks",
        "Add a batch of tasks, all or nothing",
        {
            201: Answer(
                "The added tasks, in request order.",
                "Task",
                array=True,
                links={
                    name: {**link, "parameters": _FIRST_ID} for name, link in _TASK_LINKS.items()
                },
            ),
            400: "An item is invalid (unknown handler, missing 'party', non-object 'data', bad "
            "timestamp, unknown field, a key starting with '$'...), or the batch is empty or "
            "over --max-batch; 'index' names the item. Nothing was added.",
            409: "A recurring task of this handler and data is already queued or running (the "
            "singleton rule), or the first request with this Idempotency-Key is still in "
            "progress. Nothing was added.",
            422: "This Idempotency-Key was used within 24 h with another request body. Nothing "
            "was added.",
        },
        body="AddTasks",
        headers={
            "Idempotency-Key": Field(
                {"type": "string", "minLength": 1, "maxLength": 255},
                "Makes the add safe to repeat: a request with the same key and the same body "
                "bytes within 24 h is answered the first 201 and body again and adds nothing "
                "(only a 201 is kept). 1 to 255 visible ASCII characters, such as a UUID; 400 "
                "when malformed.",
                required=False,
            )
        },
    ),
    Operation(
        "get",
        "/tasks",
        "listTasks",
        "A page of tasks in queue order",
        {
            200: Answer("The page; 'next' leads to the following one.", "Page"),
            400: "An unknown or repeated parameter, or a bad value.",
        },
        description="Queue order: timestamp, then attempts, then created, then _id.",
        query=shapes.LIST_QUERY,
    ),
    Operation(
        "get",
        "/task/{id}",
        "getTask",
        "One task",
        {
            200: Answer("The task.", "Task"),
            400: "A malformed id.",
            404: "No task has this id.",
        },
    ),
    Operation(
        "post",
        "/task/{id}",
        "runTask",
        "Run a task now, whatever its timestamp or place in the queue",
        {
            200: Answer("The task after its run.", "Task", links=_TASK_LINKS),
            400: "A malformed id, or a body other than none, {} or null.",
            404: "No task has this id.",
            409: "The task is completed, deleted, failed or running.",
        },
        description="The run happens in a warm worker process of the server; the answer comes "
        "when it ends.",
        body="RunTask",
        body_required=False,
    ),
    Operation(
        "delete",
        "/task/{id}",
        "deleteTask",
        "Delete a task (idempotent)",
        {
            200: Answer("The task, with status 'deleted'.", "Task", links=_TASK_LINKS),
            400: "A malformed id.",
            404: "No task has this id.",
            409: "The task is completed.",
        },
        description="A running task finishes its run, but stays deleted and is never retried.",
    ),
    Operation(
        "get",
        "/stats",
        "getStats",
        "Counts per status and handler, due tasks and the oldest one's wait",
        {200: Answer("The counts.", "Stats")},
    ),
    Operation(
        "get",
        "/schedulers",
        "listSchedulers",
        "The live schedulers and what their workers run",
        {200: Answer("The schedulers whose last beat is within three beats.", "Schedulers")},
        description="From the heartbeat each scheduler writes to the store every 2 s; a stopped "
        "scheduler, or one silent for 6 s, is not listed.",
    ),
    Operation(
        "get",
        "/schedules",
        "listSchedules",
        "The schedules declared on handler classes, with their next slot and task",
        {200: Answer("The declared schedules of the live schedulers' handlers.", "Schedules")},
        description="From the heartbeats of the live schedulers (each carries the schedules of "
        "the handlers it loaded) and the store's live task of each.",
    ),
    Operation(
        "get",
        "/metrics",
        "getMetrics",
        "Prometheus metrics of the whole deployment",
        {
            200: Answer(
                "The scrape (series and buckets: docs/metrics.md).",
                media={
                    "text/plain; version=0.0.4": "Prometheus text format 0.0.4 (the default)",
                    "application/openmetrics-text; version=1.0.0": "OpenMetrics, when the "
                    "Accept header asks for it",
                },
            )
        },
        description="Gauges from the store, run counters and histograms summed over the "
        "heartbeats of every scheduler of the store (live and past), and this server's "
        "request counters.",
    ),
    Operation(
        "get",
        "/ui",
        "getDashboard",
        "The web dashboard (HTML)",
        {
            200: Answer("The overview page.", media={"text/html": "an HTML page"}),
            303: Answer(
                "No session: to the login form /ui/login.",
                media={"text/html": "empty"},
                headers={"Location": "/ui/login"},
            ),
        },
        description="Pages below /ui (login, tasks, task, schedulers) are HTML for a browser; "
        "with a token, a login form sets an HttpOnly, SameSite=Strict session cookie.",
        token=False,
    ),
    Operation(
        "get",
        "/health",
        "getHealth",
        "Whether the store takes writes",
        {200: Answer("The store took a write within about a second.", "Health")},
        description="Needs no token; answers within about a second whatever the store does. "
        "503 names the reason.",
        token=False,
    ),
    Operation(
        "get",
        "/openapi.json",
        "getOpenAPI",
        "This document",
        {200: Answer("The OpenAPI 3.1 document of the API.", "OpenAPI")},
    ),
    *DASHBOARD,
)
