"""Tornado request handlers: one per resource, all answering JSON, errors as ``{"error": ...}``.

``JSONHandler`` is the base: ``initialize`` receives the shared ``Context``; ``prepare`` passes the
request through ``pipeline.check_request`` (token, ``Host``/``Origin``, size) before any body is
read; the body is streamed so an oversized one is answered 413 without being kept; ``write_error``
turns every exception into one JSON error shape through ``pipeline.error_answer``; and
``log_request`` writes one line per request. Every queue call leaves the event loop through
``ctx.calls`` (a pool of store threads with a deadline: a stalled store is a 503, not a frozen
server), but for the small add that ``try_add_inline`` runs in place when the store's locks are
free. ``GET /stats`` and ``GET /health`` are served from ``probes``' caches. ``AddTasks`` serves
the common ``POST /tasks`` below the ``RequestHandler`` machinery, through the same check and with
the same answers. The wire shape lives in ``wire``. Imports tornado, ``queue``, ``model``,
``errors`` and ``server.wire``/``pipeline``/``probes``/``offload``; no store module, no pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
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
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from .. import log, metrics, schedule
from ..errors import StoreBusy, StoreUnavailable, TaskException
from ..model import Status, Task, singleton_key
from ..timestamps import format_timestamp as iso
from ..views import Live, Views
from . import idempotency, openapi, wire
from .liveness import why
from .pipeline import (
    DRAIN_LIMIT,
    ApiError,
    Context,
    body_too_large,
    check_request,
    error_answer,
)

__all__ = ["DRAIN_LIMIT", "ApiError", "Context", "Runner"]

logger = logging.getLogger(log.SERVER)

Runner = Callable[[Task], Awaitable["Status | None"]]

#: Bodies up to this size are parsed on the event loop; larger ones in a store thread, item by
#: item, so no request waits behind the parse of another's megabytes.
INLINE_BODY = 64 * 1024
#: Batches up to this many tasks may be inserted on the event loop when the store allows it.
INLINE_ITEMS = 16

ENDPOINTS = openapi.endpoints()


@stream_request_body
class JSONHandler(RequestHandler):
    """Base of every Party handler: the request checks, a streamed body with a size limit, one
    error shape."""

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
        try:
            declared = check_request(self.request, self.ctx)
        except ApiError as exc:
            if exc.status_code == 413:
                raise
            # Answered once the body (within the limit) is read and dropped: answering before
            # it would make Tornado close a kept-alive connection.
            self._too_large = True
            self._refusal = exc
            setattr(self, self.request.method.lower(), self._refuse)  # type: ignore[union-attr]
            return
        if declared is not None and declared > self.ctx.max_body:
            self._too_large = True
            self._size = declared

    _refusal: ApiError | None = None

    def _refuse(self, *args: Any) -> None:
        assert self._refusal is not None
        raise self._refusal

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self.ctx.max_body:
            self._too_large = True
            self._chunks = []
        else:
            self._chunks.append(chunk)

    def body(self) -> bytes:
        """The request body; 413 when it was over the limit."""
        if self._too_large:
            raise body_too_large(self._size, self.ctx.max_body)
        body = b"".join(self._chunks)
        self._chunks = []
        return body

    def send_json(self, value: Any, status: int = 200) -> None:
        """Finish the request with ``value`` as its JSON body."""
        if status != 200:
            self.set_status(status)
        self.finish(wire.dumps(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        if status_code == 405 and not isinstance(exc, ApiError):
            allowed = [m for m in ("GET", "POST", "DELETE") if _overrides(self, m)]
            status, body = (
                405,
                {
                    "error": f"{self.request.method} is not allowed on {self.request.path}; "
                    f"allowed: {', '.join(allowed)}"
                },
            )
        else:
            status, body = error_answer(exc, status_code, self._reason)
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
    summary = f"{request.method} {request.path} ({request.remote_ip})"
    if isinstance(exc, StoreUnavailable):
        logger.warning("store unavailable during %s: %s", summary, exc)
        return
    logger.error("bug while serving %s", summary, exc_info=(type(exc), exc, exc.__traceback__))


def _overrides(handler: RequestHandler, method: str) -> bool:
    name = method.lower()
    return getattr(type(handler), name) is not getattr(RequestHandler, name)


# -- adding ---------------------------------------------------------------------------------------


def try_add_inline(ctx: Context, body: bytes) -> bytes | None:
    """The answer to adding ``body``'s tasks, done on the event loop; None when it must go to a
    store thread (a large body or batch, a store whose writes are remote, or a lock taken), or
    before the server's first look at the live schedulers (the ``waiting`` of the answer)."""
    if len(body) > INLINE_BODY or not ctx.calls.can_inline():
        return None
    live = ctx.live.peek()
    if live is None:
        return None
    items = wire.parse_tasks(wire.loads(body), ctx.max_batch)
    if len(items) > INLINE_ITEMS:
        return None
    try:
        tasks = ctx.calls.inline(ctx.queue.add, items)
    except StoreBusy:
        return None
    ctx.stats.wrote()
    return wire.dumps_tasks(tasks, why(live))


async def add_tasks(ctx: Context, body: bytes) -> bytes:
    """The answer (JSON of the added tasks) to ``POST /tasks`` with ``body``."""
    answer = try_add_inline(ctx, body)
    if answer is None:
        live = ctx.live.peek() or await ctx.live.get()
        answer = await ctx.calls(_add_in_thread, ctx, body, live)
        ctx.stats.wrote()
    return answer


def _add_in_thread(ctx: Context, body: bytes, live: Live) -> bytes:
    if len(body) > INLINE_BODY:
        items = wire.parse_tasks_body(body, ctx.max_batch)
    else:
        items = wire.parse_tasks(wire.loads(body), ctx.max_batch)
    del body
    return wire.dumps_tasks(ctx.queue.add(items), why(live))


async def _encoder(ctx: Context) -> Callable[[list[Task]], bytes]:
    """How added tasks become the answer of ``POST /tasks`` (with their ``waiting``)."""
    live = await ctx.live.get()
    return lambda tasks: wire.dumps_tasks(tasks, why(live))


class TasksHandler(JSONHandler):
    """``POST /tasks`` adds a batch (all or nothing); ``GET /tasks`` lists a page in queue order."""

    async def post(self) -> None:
        key = self.request.headers.get(idempotency.HEADER)
        if key is None:
            answer = await add_tasks(self.ctx, self.body())
        else:
            encode = await _encoder(self.ctx)
            answer = await idempotency.add_once(self.ctx, key, self.body(), encode)
        self.set_status(201)
        self.finish(answer)

    async def get(self) -> None:
        query = wire.parse_list_query(self.request.query_arguments)
        tasks = await self.ctx.calls(lambda: self.ctx.views.list(**query), writes=False)
        self.send_json(wire.encode_page(tasks, query["limit"], why(await self.ctx.live.get())))


class TaskHandler(JSONHandler):
    """``GET``, ``DELETE`` and ``POST`` (force-run) of ``/task/<id>``."""

    async def get(self, task_id: str) -> None:
        task = await self.ctx.calls(self.queue.get, wire.check_id(task_id), writes=False)
        await self.send_task(task)

    async def send_task(self, task: Task) -> None:
        """Finish with ``task`` and its ``waiting``."""
        self.send_json(wire.encode_task(task, why(await self.ctx.live.get())))

    async def delete(self, task_id: str) -> None:
        task = await self.ctx.calls(self.queue.delete, wire.check_id(task_id))
        self.ctx.stats.wrote()
        await self.send_task(task)

    async def post(self, task_id: str) -> None:
        wire.check_id(task_id)
        wire.check_run_body(wire.loads(self.body()))
        task = await self.ctx.calls(self.queue.claim_now, task_id)
        self.ctx.stats.wrote()
        # The run happens in a warm worker process; the event loop serves other requests meanwhile.
        await self.ctx.runner(task)
        self.ctx.stats.wrote()
        await self.send_task(await self.ctx.calls(self.queue.get, task_id))


class StatsHandler(JSONHandler):
    """``GET /stats``: counts per status and per party, due tasks and the oldest one's age, from a
    cache refreshed off the event loop (``probes.StatsCache``)."""

    async def get(self) -> None:
        self.send_json(await self.ctx.stats.get())


class SchedulersHandler(JSONHandler):
    """``GET /schedulers``: the live schedulers (a beat within ``views.DEAD_AFTER``, not stopped),
    each with what its workers run."""

    async def get(self) -> None:
        live = await self.ctx.live.get()
        self.send_json({"schedulers": [wire.encode_scheduler(r) for r in live.schedulers]})


class SchedulesHandler(JSONHandler):
    """``GET /schedules``: the schedules the live schedulers declare (``schedule.latest``: the
    one started last wins), each with its next slot and its live task."""

    async def get(self) -> None:
        live = await self.ctx.live.get()
        declared = schedule.latest(live.schedulers)
        views, now = self.ctx.views, live.at
        rows = await self.ctx.calls(lambda: _schedules(views, declared, now), writes=False)
        self.send_json({"schedules": rows})


def _schedules(
    views: Views, declared: dict[str, schedule.Declaration], now: datetime
) -> list[dict[str, Any]]:
    rows = []
    for party, decl in sorted(declared.items()):
        key = singleton_key(party, decl.data)
        task = next(
            (t for status in (Status.QUEUED, Status.RUNNING)
             for t in views.list(status=status, party=party, limit=1000) if t.singleton == key),
            None,
        )  # fmt: skip
        if task is None:
            when = decl.first(now)
        elif task.status == Status.QUEUED:
            when = task.timestamp
        else:
            when = decl.after(task.timestamp, now)
        rows.append({
            "party": party, "schedule": decl.schedule, "every": decl.every,
            "timezone": decl.timezone, "data": decl.data, "next": iso(when),
            "task": None if task is None else {"_id": task.id,
                                               "timestamp": iso(task.timestamp)},
        })  # fmt: skip
    return rows


class MetricsHandler(JSONHandler):
    """``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics when ``Accept`` asks."""

    async def get(self) -> None:
        figures = await self.ctx.calls(metrics.sample, self.ctx.views, writes=False)
        body, content_type = metrics.render(
            figures,
            self.ctx.counters,
            openmetrics=metrics.wants_openmetrics(self.request.headers.get("Accept")),
        )
        self.set_header("Content-Type", content_type)
        self.finish(body)


class HealthHandler(JSONHandler):
    """``GET /health``: 200 when the store took a write within about a second, else 503 with the
    reason; answered within about a second whatever the store does; needs no token."""

    async def get(self) -> None:
        await self.ctx.health.get()
        self.send_json({"status": "ok"})


class OpenAPIHandler(JSONHandler):
    """``GET /openapi.json``: the OpenAPI 3.1 document of this API (``server.openapi``)."""

    def get(self) -> None:
        self.finish(openapi.document_bytes())


class NotFoundHandler(JSONHandler):
    """Any other path: 404 naming the endpoints that exist."""

    def prepare(self) -> None:
        super().prepare()
        if self._refusal is None:
            raise ApiError(404, f"no endpoint {self.request.path}; the endpoints are {ENDPOINTS}")


def log_request(handler: RequestHandler) -> None:
    """The one log line of a request: status, method, path, duration and any error message."""
    ctx = getattr(handler, "ctx", None)
    _log_access(
        handler.get_status(),
        handler.request,
        getattr(handler, "error_message", None),
        None if ctx is None else ctx.counters,
    )


def _log_access(
    status: int,
    request: HTTPServerRequest,
    message: str | None,
    counters: metrics.ServerCounters | None = None,
) -> None:
    if counters is not None:
        counters.request(request.method or "", status, request.path)
    level = logging.INFO if status < 500 else logging.ERROR
    if status == 503:
        level = logging.WARNING  # the store or the server cannot serve now: not a bug
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
    one that ``check_request`` lets through with a declared length within the limit
    (``accepts``); every other one goes to ``TasksHandler``, which answers the refusals. The
    answers are the same: 201 with the added tasks, or the one error shape, and the same log
    line.
    """

    @staticmethod
    def accepts(request: HTTPServerRequest, ctx: Context) -> bool:
        """True when ``request`` passes ``check_request`` with a length within the limit."""
        if idempotency.HEADER in request.headers:
            return False  # TasksHandler serves a keyed add
        try:
            declared = check_request(request, ctx)
        except ApiError:
            return False
        return declared is not None and declared <= ctx.max_body

    def __init__(self, request: HTTPServerRequest, ctx: Context) -> None:
        self.request = request
        self.ctx = ctx
        self._chunks: list[bytes] = []
        self._later: asyncio.Future[None] | None = None

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        body = b"".join(self._chunks)
        self._chunks = []
        try:
            answer = try_add_inline(self.ctx, body)
        except Exception as exc:
            self._answer_error(exc)
            return
        if answer is not None:
            self._answer(201, answer, None)
        else:  # Tornado reads the connection's next request once this one's answer is written
            self._later = asyncio.ensure_future(self._finish_later(body))

    async def _finish_later(self, body: bytes) -> None:
        try:
            answer = await add_tasks(self.ctx, body)
        except Exception as exc:
            self._answer_error(exc)
        else:
            self._answer(201, answer, None)

    def _answer_error(self, exc: Exception) -> None:
        _log_failure(self.request, exc)
        status, answer = error_answer(exc, 500)
        self._answer(status, wire.dumps(answer), answer["error"])

    def _answer(self, status: int, body: bytes, message: str | None) -> None:
        request = self.request
        connection = request.connection
        assert connection is not None
        headers = HTTPHeaders()
        headers["Server"] = _SERVER
        headers["Content-Type"] = _JSON_TYPE
        headers["Date"] = _http_date()
        headers["Content-Length"] = str(len(body))
        try:
            connection.write_headers(
                ResponseStartLine("", status, responses[status]), headers, body
            )
            connection.finish()
        except StreamClosedError:  # the client went away while the answer was prepared
            return
        _log_access(status, request, message, self.ctx.counters)

    def on_connection_close(self) -> None:
        self._chunks = []
