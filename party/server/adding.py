"""Adding tasks over HTTP: the ``POST /tasks`` of the ordinary request, from body to answer.

``try_add_inline`` adds a small batch on the event loop when the store's locks are free;
``add_tasks`` falls back to a store thread (``ctx.calls``) for a large body, a large batch or a
busy store; ``AddTasks`` serves the common request straight from Tornado's HTTP layer, below the
``RequestHandler`` machinery, through the same ``pipeline.check_request`` and with the same answers
and log line as ``handlers.TasksHandler`` (which serves the rest, the keyed add included). Imports
tornado's HTTP layer, ``model`` and ``server.wire``/``pipeline``/``liveness``/``idempotency``; no
store module, no pool, and nothing of ``handlers``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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

from ..errors import StoreBusy
from ..model import Task
from ..views import Live
from . import idempotency, wire
from .liveness import why
from .pipeline import ApiError, Context, check_request, error_answer, log_access, log_failure

#: Bodies up to this size are parsed on the event loop; larger ones in a store thread, item by
#: item, so no request waits behind the parse of another's megabytes.
INLINE_BODY = 64 * 1024
#: Batches up to this many tasks may be inserted on the event loop when the store allows it.
INLINE_ITEMS = 16


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


async def answer_encoder(ctx: Context) -> Callable[[list[Task]], bytes]:
    """How added tasks become the answer of ``POST /tasks`` (with their ``waiting``)."""
    live = await ctx.live.get()
    return lambda tasks: wire.dumps_tasks(tasks, why(live))


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
        log_failure(self.request, exc)
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
        log_access(status, request, message, self.ctx.counters)

    def on_connection_close(self) -> None:
        self._chunks = []
