"""Tornado request handlers: one per resource, all answering JSON, errors as ``{"error": ...}``.

``JSONHandler`` is the base: ``initialize`` receives the shared ``Context``; ``prepare`` passes the
request through ``pipeline.check_request`` (token, ``Host``/``Origin``, size) before any body is
read; the body is streamed so an oversized one is answered 413 without being kept; ``write_error``
turns every exception into one JSON error shape through ``pipeline.error_answer``; and
``pipeline.log_request`` writes one line per request. Every queue call leaves the event loop through
``ctx.calls`` (a pool of store threads with a deadline: a stalled store is a 503, not a frozen
server), but for the small add that ``try_add_inline`` runs in place when the store's locks are
free. ``GET /stats`` and ``GET /health`` are served from ``probes``' caches. ``AddTasks`` serves
the common ``POST /tasks`` below the ``RequestHandler`` machinery, through the same check and with
the same answers, in ``adding`` (with the adds of ``TasksHandler``). The wire shape lives in
``wire``. Imports tornado, ``model``, ``errors``, ``views`` and
``server.wire``/``pipeline``/``adding``/``idempotency``/``openapi``; no store module, no pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from tornado.web import RequestHandler, stream_request_body

from .. import metrics, schedule
from ..model import Status, Task, singleton_key
from ..timestamps import format_timestamp as iso
from ..views import Views
from . import idempotency, openapi, wire
from .adding import add_tasks, answer_encoder
from .liveness import why
from .pipeline import (
    DRAIN_LIMIT,
    ApiError,
    Context,
    body_too_large,
    check_request,
    error_answer,
    log_failure,
)

__all__ = ["DRAIN_LIMIT", "ApiError", "Context", "Runner"]

Runner = Callable[[Task], Awaitable["Status | None"]]

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
            # Tornado refuses a method the handler lacks before ``prepare``: the request's own
            # checks (the token, Host and Origin) still come first, so no method gets past them.
            try:
                check_request(self.request, self.ctx)
            except ApiError as refused:
                exc = refused
        if status_code == 405 and not isinstance(exc, ApiError):
            allowed = [m for m in ("GET", "POST", "DELETE") if _overrides(self, m)]
            method = self.request.method or ""
            shown = method if len(method) <= 20 else method[:20] + "..."
            status, body = (
                405,
                {
                    "error": f"{shown} is not allowed on {self.request.path}; "
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
        log_failure(self.request, value)


def _overrides(handler: RequestHandler, method: str) -> bool:
    name = method.lower()
    return getattr(type(handler), name) is not getattr(RequestHandler, name)


class TasksHandler(JSONHandler):
    """``POST /tasks`` adds a batch (all or nothing); ``GET /tasks`` lists a page in queue order."""

    async def post(self) -> None:
        key = self.request.headers.get(idempotency.HEADER)
        if key is None:
            answer = await add_tasks(self.ctx, self.body())
        else:
            encode = await answer_encoder(self.ctx)
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
        async with self.ctx.force_runs.request():  # a stopping server waits for it, claim included
            task = await self.ctx.calls(self.queue.claim_now, task_id)
            self.ctx.stats.wrote()
            # The run happens in a warm worker process; the event loop serves other requests
            # meanwhile.
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
