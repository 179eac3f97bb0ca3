"""Tornado request handlers: one per resource, all answering JSON, errors as ``{"error": ...}``.

``JSONHandler`` is the base: ``initialize`` receives the shared ``Context`` (queue, limits, token,
force-run runner), ``prepare`` checks the token in constant time before any body is read, the body
is streamed so an oversized one is answered 413 without being kept, ``write_error`` turns every
exception into one JSON error shape, and ``log_request`` writes one line per request. Handlers call
the queue directly (its store calls are short and keep the request path lean); only a force-run
leaves the event loop, through the injected runner. ``AddTasks`` serves the common ``POST /tasks``
below the ``RequestHandler`` machinery, with the same answers. The wire shape lives in ``wire``.
Imports tornado, ``queue``, ``model``, ``errors`` and ``server.wire``; no store module, no pool.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import tornado
from tornado.httputil import (
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerRequest,
    ResponseStartLine,
    format_timestamp,
    responses,
)
from tornado.web import HTTPError, RequestHandler, stream_request_body

from .. import log
from ..errors import Conflict, NotFound, StoreUnavailable, TaskException, ValidationError
from ..model import Status, Task
from ..queue import TaskQueue
from . import wire

logger = logging.getLogger(log.SERVER)

#: How far past ``max_body`` a declared body is still read (and dropped) so the client, still
#: sending, can read the 413; beyond it the connection is closed after the answer.
DRAIN_LIMIT = 64 * 1024 * 1024

Runner = Callable[[Task], Awaitable["Status | None"]]

ENDPOINTS = (
    "POST /tasks, GET /tasks, GET /task/<id>, POST /task/<id>, DELETE /task/<id>, "
    "GET /stats, GET /health"
)


@dataclass(frozen=True)
class Context:
    """What every handler shares: the queue, the limits, the token and the force-run runner."""

    queue: TaskQueue
    runner: Runner
    max_body: int
    max_batch: int
    token: str | None = None

    @cached_property
    def authorization(self) -> bytes | None:
        """The exact ``Authorization`` header value a request must carry (None: no token)."""
        return None if self.token is None else b"Bearer " + self.token.encode()


class ApiError(HTTPError):
    """An HTTP error with the message the client sees (and, for a batch, the item's index)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.message = message
        self.index = index
        self.headers = headers or {}


@stream_request_body
class JSONHandler(RequestHandler):
    """Base of every Party handler: token, streamed body with a size limit, one error shape."""

    requires_token = True

    def initialize(self, ctx: Context) -> None:  # type: ignore[override]
        self.ctx = ctx
        self.queue = ctx.queue
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self.error_message: str | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")

    def compute_etag(self) -> None:
        return None  # responses are live state; hashing every body would only cost time

    def prepare(self) -> None:
        if self.requires_token and self.ctx.token is not None:
            header = self.request.headers.get("Authorization")
            expected = self.ctx.authorization
            assert expected is not None
            if header is None:
                self._unauthorized(
                    "this server requires a token: send 'Authorization: Bearer <token>'"
                )
            if not hmac.compare_digest(header.encode("utf-8", "replace"), expected):
                self._unauthorized(
                    "wrong token: send 'Authorization: Bearer <token>' with the server's token"
                )
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.ctx.max_body:
            if int(declared) > self.ctx.max_body + DRAIN_LIMIT:
                raise self._body_too_large(int(declared))
            self._too_large = True
            self._size = int(declared)

    def _unauthorized(self, message: str) -> None:
        raise ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="party"'})

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self.ctx.max_body:
            self._too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def _body_too_large(self, size: int) -> ApiError:
        return ApiError(
            413,
            f"request body of {size} bytes is over the limit of {self.ctx.max_body} bytes "
            "(--max-body / PARTY_MAX_BODY); send fewer tasks per request",
        )

    def json_body(self) -> Any:
        """The decoded request body (None when empty); 413 when it was over the limit."""
        if self._too_large:
            raise self._body_too_large(self._size)
        return wire.loads(b"".join(self._chunks))

    def send_json(self, value: Any, status: int = 200) -> None:
        """Finish the request with ``value`` as its JSON body."""
        if status != 200:
            self.set_status(status)
        self.finish(wire.dumps(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        status, body = _error_response(self, exc, status_code)
        if status != status_code:
            self.set_status(status)
        if isinstance(exc, ApiError):
            # Set here: send_error clears every header set before the error was raised.
            for name, value in exc.headers.items():
                self.set_header(name, value)
        self.error_message = body["error"]
        self.finish(wire.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        _log_failure(self.request, value)


def _log_failure(request: HTTPServerRequest, exc: BaseException) -> None:
    """Log an exception that ended a request, unless it is an expected answer (4xx, 409...)."""
    if isinstance(exc, HTTPError | TaskException):
        return  # expected: the request's log line carries the message
    summary = f"{request.method} {request.uri} ({request.remote_ip})"
    if isinstance(exc, StoreUnavailable):
        logger.error("store unavailable during %s: %s", summary, exc)
        return
    logger.error("bug while serving %s", summary, exc_info=(type(exc), exc, exc.__traceback__))


def _error_response(
    handler: RequestHandler | None, exc: BaseException | None, status: int
) -> tuple[int, dict[str, Any]]:
    """The status and ``{"error": ...}`` body answering ``exc``; ``handler`` is None only for an
    exception that is not an ``HTTPError`` (``AddTasks``)."""
    index: int | None = None
    if isinstance(exc, ApiError):
        status, message, index = exc.status_code, exc.message, exc.index
    elif isinstance(exc, ValidationError):
        status, message, index = 400, exc.message, exc.index
    elif isinstance(exc, NotFound):
        status, message = 404, str(exc)
    elif isinstance(exc, Conflict):
        status, message, index = 409, exc.message, exc.index
    elif isinstance(exc, TaskException):
        status, message = 400, str(exc)
    elif isinstance(exc, StoreUnavailable):
        status, message = 503, f"the store is unavailable: {exc}"
    elif status == 405 and handler is not None:
        allowed = [m for m in ("GET", "POST", "DELETE") if _overrides(handler, m)]
        message = (
            f"{handler.request.method} is not allowed on {handler.request.path}; "
            f"allowed: {', '.join(allowed)}"
        )
    elif isinstance(exc, HTTPError) and handler is not None:
        message = exc.log_message % exc.args if exc.log_message else (exc.reason or handler._reason)
    elif status >= 500:
        kind = type(exc).__name__ if exc is not None else "error"
        message = f"internal server error ({kind}: {exc}); this is a bug, see the server log"
    else:
        message = handler._reason if handler is not None else responses.get(status, "error")
    body: dict[str, Any] = {"error": message}
    if index is not None:
        body["index"] = index
    return status, body


def _overrides(handler: RequestHandler, method: str) -> bool:
    name = method.lower()
    return getattr(type(handler), name) is not getattr(RequestHandler, name)


class TasksHandler(JSONHandler):
    """``POST /tasks`` adds a batch (all or nothing); ``GET /tasks`` lists a page in queue order."""

    def post(self) -> None:
        items = wire.parse_tasks(self.json_body(), self.ctx.max_batch)
        tasks = self.queue.add(items)
        self.set_status(201)
        self.finish(wire.dumps_tasks(tasks))

    def get(self) -> None:
        query = wire.parse_list_query(self.request.query_arguments)
        tasks = self.queue.list(**query)
        self.send_json(wire.encode_page(tasks, query["limit"]))


class TaskHandler(JSONHandler):
    """``GET``, ``DELETE`` and ``POST`` (force-run) of ``/task/<id>``."""

    def get(self, task_id: str) -> None:
        self.send_json(wire.encode_task(self.queue.get(wire.check_id(task_id))))

    def delete(self, task_id: str) -> None:
        self.send_json(wire.encode_task(self.queue.delete(wire.check_id(task_id))))

    async def post(self, task_id: str) -> None:
        wire.check_id(task_id)
        wire.check_run_body(self.json_body())
        task = self.queue.claim_now(task_id)
        # The run happens in a warm worker process; the event loop serves other requests meanwhile.
        await self.ctx.runner(task)
        self.send_json(wire.encode_task(self.queue.get(task_id)))


class StatsHandler(JSONHandler):
    """``GET /stats``: counts per status and per party, due tasks and the oldest one's age."""

    def get(self) -> None:
        self.send_json(self.queue.stats())


class HealthHandler(JSONHandler):
    """``GET /health``: 200 when the store answers, 503 otherwise; needs no token."""

    requires_token = False

    def get(self) -> None:
        self.queue.store.ping()
        self.send_json({"status": "ok"})


class NotFoundHandler(JSONHandler):
    """Any other path: 404 naming the endpoints that exist."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, f"no endpoint {self.request.path}; the endpoints are {ENDPOINTS}")


def log_request(handler: RequestHandler) -> None:
    """The one log line of a request: status, method, path, duration and any error message."""
    _log_access(handler.get_status(), handler.request, getattr(handler, "error_message", None))


def _log_access(status: int, request: HTTPServerRequest, message: str | None) -> None:
    level = logging.INFO if status < 500 else logging.ERROR
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "%d %s %s %.1fms%s",
        status,
        request.method,
        request.uri,
        1000.0 * request.request_time(),
        f" {message}" if message else "",
    )


_JSON_TYPE = "application/json; charset=UTF-8"
_SERVER = f"TornadoServer/{tornado.version}"  # as RequestHandler sends it
_date: list[Any] = [0, ""]


def _http_date() -> str:
    """The ``Date`` header of a response, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, format_timestamp(now)]
    return _date[1]


class AddTasks(HTTPMessageDelegate):
    """``POST /tasks`` served straight from Tornado's HTTP layer, without a ``RequestHandler``.

    A handler object, its coroutine, ``prepare`` and the body future cost about 150 us of the
    300 us between reading a request and starting the insert (more with cold caches, which is
    the case of a lone task on an idle server). This delegate takes only the ordinary request,
    whose body has a declared length within the limit and which carries the token when one is
    set (``accepts``); every other one goes to ``TasksHandler``, which owns the 401 and 413
    answers. The answers are the same: 201 with the added tasks, or the one error shape, and
    the same log line.
    """

    @staticmethod
    def accepts(request: HTTPServerRequest, ctx: Context) -> bool:
        """True when ``request`` needs none of ``JSONHandler.prepare``'s refusals."""
        headers = request.headers
        declared = headers.get("Content-Length")
        if declared is None or not declared.isdigit() or int(declared) > ctx.max_body:
            return False
        if ctx.token is None:
            return True
        header = headers.get("Authorization")
        expected = ctx.authorization
        assert expected is not None
        return header is not None and hmac.compare_digest(
            header.encode("utf-8", "replace"), expected
        )

    def __init__(self, request: HTTPServerRequest, ctx: Context) -> None:
        self.request = request
        self.ctx = ctx
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        request = self.request
        message = None
        try:
            items = wire.parse_tasks(wire.loads(b"".join(self._chunks)), self.ctx.max_batch)
            status, body = 201, wire.dumps_tasks(self.ctx.queue.add(items))
        except Exception as exc:
            _log_failure(request, exc)
            status, answer = _error_response(None, exc, 500)
            message = answer["error"]
            body = wire.dumps(answer)
        headers = HTTPHeaders()
        headers["Server"] = _SERVER
        headers["Content-Type"] = _JSON_TYPE
        headers["Date"] = _http_date()
        headers["Content-Length"] = str(len(body))
        connection = request.connection
        assert connection is not None
        connection.write_headers(ResponseStartLine("", status, responses[status]), headers, body)
        connection.finish()
        _log_access(status, request, message)

    def on_connection_close(self) -> None:
        self._chunks = []
