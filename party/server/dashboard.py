"""The web dashboard at ``/ui``: overview, task list, task page, live schedulers; HTML from
tornado templates (``server/templates/``), a stylesheet and a little plain JavaScript
(``server/static/``), nothing from the network.

Access: with a token, a session cookie (HttpOnly, SameSite=Strict) set by the login form proves
it; without one, ``GET /ui`` answers 303 to ``/ui/login``. The cookie's value is an HMAC of the
token, so a restart keeps sessions and a changed token ends them. Without a token (loopback) the
dashboard is open, and the ``Host``/``Origin`` rules of every request still hold. Every action
(a POST) carries a CSRF token derived from the session and is refused without it.

Every page is indexed queries (``views``): pages of 50 in queue order by status (the
``tasks_order`` index), the count tables, the heartbeats; the text search reads at most
``views.SEARCH_SCAN`` tasks of the listed status and says so. Runs per minute come from the
schedulers' run counters, sampled by this server at each overview (so they cover the time since
it started, up to an hour). Reads only ``queue``, ``views`` and ``wire``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any

from tornado import httputil
from tornado.web import HTTPError, RequestHandler, stream_request_body

from ..errors import StoreUnavailable, TaskException
from ..model import Status, Task
from ..timestamps import system_now
from ..views import SEARCH_SCAN, Live, waiting
from . import wire
from .pipeline import ApiError, Context, _check_host_and_origin, error_answer

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
COOKIE = "party_session"
#: Largest body a dashboard form may send: a token or a CSRF token, never megabytes.
UI_MAX_BODY = 64 * 1024
PAGE = 50
#: Seconds the overview keeps samples of the run counters (runs per minute over the last hour).
HISTORY = 3600.0


class Sampler:
    """The schedulers' summed run counters, sampled at most every ``every`` seconds for an hour:
    runs per minute as the difference of two samples."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.samples: deque[tuple[float, int, int]] = deque()  # (time, all runs, failed ones)

    def add(self, totals: dict[str, dict[str, int]]) -> None:
        now = time.time()
        if self.samples and now - self.samples[-1][0] < self.every:
            return
        runs = sum(sum(c.values()) for c in totals.values())
        failed = sum(c.get("failed", 0) + c.get("retried", 0) for c in totals.values())
        self.samples.append((now, runs, failed))
        while self.samples and now - self.samples[0][0] > HISTORY + self.every:
            self.samples.popleft()

    def per_minute(self) -> list[tuple[int, int, int]]:
        """(minutes ago, runs, failed runs) for each minute between samples, oldest first."""
        minutes: dict[int, list[int]] = {}
        now = time.time()
        points = list(self.samples)
        for (_, r0, f0), (t1, r1, f1) in zip(points, points[1:], strict=False):
            ago = int((now - t1) // 60)
            bucket = minutes.setdefault(ago, [0, 0])
            bucket[0] += max(r1 - r0, 0)
            bucket[1] += max(f1 - f0, 0)
        return [(ago, r, f) for ago, (r, f) in sorted(minutes.items(), reverse=True)]


@stream_request_body
class UIHandler(RequestHandler):
    """Base of the dashboard's pages: the session or the loopback rules, HTML errors.

    Bodies are streamed so that each request's own limit (``UI_MAX_BODY``) holds before any of it
    is read: the server's limit is the API's (megabytes), and Tornado would read and parse that
    much of a form on the event loop, before the login is even checked. A ``post`` reads its form
    with ``form()``, which also checks the CSRF token.
    """

    def initialize(self, ctx: Context, sampler: Sampler, secret: bytes) -> None:  # type: ignore[override]
        self.ctx = ctx
        self.sampler = sampler
        self.secret = secret
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def form(self) -> bool:
        """Parse the form the body holds; False when refused (400: not a form; 403: a wrong
        CSRF token), the answer then sent."""
        request = self.request
        try:
            httputil.parse_body_arguments(
                request.headers.get("Content-Type", ""),
                b"".join(self._chunks),
                request.body_arguments,
                request.files,
                request.headers,
            )
        except httputil.HTTPInputError as exc:  # what Tornado answers 400 for unstreamed bodies
            self.send_error(400, reason_text=f"the form cannot be read: {exc}")
            return False
        for name, values in request.body_arguments.items():
            request.arguments.setdefault(name, []).extend(values)
        if isinstance(self, LoginHandler):
            return True
        given = self.get_body_argument("csrf", "")
        if not hmac.compare_digest(given.encode(), self.csrf().encode()):
            self._refuse(403, "the form's CSRF token is missing or wrong: reload the page")
            return False
        return True

    def get_template_path(self) -> str:
        return str(TEMPLATES)

    def session_value(self) -> str:
        """The session cookie's value for this server's token."""
        key = (self.ctx.token or "").encode() or self.secret
        return hmac.new(key, b"party-ui-session", hashlib.sha256).hexdigest()

    def csrf(self) -> str:
        """The CSRF token every form of the page carries."""
        return hmac.new(self.secret, self.session_value().encode(), hashlib.sha256).hexdigest()

    def logged_in(self) -> bool:
        if self.ctx.token is None:
            return True
        cookie = self.get_cookie(COOKIE) or ""
        return hmac.compare_digest(cookie.encode(), self.session_value().encode())

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(UI_MAX_BODY)  # type: ignore[union-attr]
        if self.ctx.token is None:
            try:
                _check_host_and_origin(self.request, self.ctx)
            except ApiError as exc:
                self._refuse(exc.status_code, exc.message)
                return
        if not self.logged_in() and not isinstance(self, LoginHandler):
            if self.request.method == "GET":
                self.redirect("/ui/login", status=303)
            else:
                self.send_error(401, reason_text="log in first")
            return

    def _refuse(self, status: int, message: str) -> None:
        # A refusal in the API's JSON shape (the document's 403): the same rules answer alike.
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_status(status)
        self.finish(wire.dumps({"error": message}))

    def render_page(self, name: str, **values: Any) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render(
            name,
            csrf=self.csrf(),
            token_set=self.ctx.token is not None,
            fmt_seconds=_fmt_seconds,
            **values,
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        message = kwargs.get("reason_text")
        if message is None:
            status_code, body = error_answer(exc, status_code, self._reason)
            message = body["error"]
            self.set_status(status_code)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            self.render_string(
                "error.html",
                status=status_code,
                message=message,
                csrf="",
                token_set=self.ctx.token is not None,
            )  # fmt: skip
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, HTTPError | TaskException | StoreUnavailable):
            super().log_exception(typ, value, tb)

    async def call(self, fn: Any, *args: Any, writes: bool = False) -> Any:
        """``fn(*args)`` in a store thread (never on the event loop)."""
        return await self.ctx.calls(fn, *args, writes=writes)

    async def live(self) -> Live:
        return await self.ctx.live.get()


class LoginHandler(UIHandler):
    """``/ui/login``: the form; a right token sets the session cookie."""

    def get(self) -> None:
        if self.ctx.token is None or self.logged_in():
            self.redirect("/ui", status=303)
            return
        self.render_page("login.html", error=None)

    def post(self) -> None:
        if not self.form():
            return
        given = self.get_body_argument("token", "")
        if self.ctx.token is None or hmac.compare_digest(given.encode(), self.ctx.token.encode()):
            self.set_cookie(COOKIE, self.session_value(), httponly=True, samesite="Strict",
                            path="/ui")  # fmt: skip
            self.redirect("/ui", status=303)
            return
        self.set_status(401)
        self.render_page("login.html", error="wrong token")


class LogoutHandler(UIHandler):
    """``POST /ui/logout``: ends the session."""

    def post(self) -> None:
        if not self.form():
            return
        self.clear_cookie(COOKIE, path="/ui")
        self.redirect("/ui/login" if self.ctx.token else "/ui", status=303)


class OverviewHandler(UIHandler):
    """``/ui``: counts by status and handler, due backlog, runs per minute, failures, schedulers."""

    async def get(self) -> None:
        views = self.ctx.views
        stats = await self.ctx.stats.get()
        live = await self.live()
        totals = await self.call(views.run_totals)
        self.sampler.add(totals)
        failures = await self.call(lambda: views.list(status=Status.FAILED, limit=10))
        self.render_page(
            "overview.html",
            stats=stats,
            live=live,
            totals=totals,
            per_minute=self.sampler.per_minute(),
            failures=failures,
            schedules=await self._schedules(),
        )

    async def _schedules(self) -> list[dict[str, Any]] | None:
        """The declared schedules when this server serves ``GET /schedules`` (another issue)."""
        app = self.application
        if not any(r.matcher.regex.match("/schedules") for r in app.wildcard_router.rules):
            return None
        reader = getattr(self.ctx.views, "schedules", None)
        if reader is None:
            return None
        return list(await self.call(reader))


class TasksHandler(UIHandler):
    """``/ui/tasks``: a page of tasks of one status, by handler, with a text search in data."""

    async def get(self) -> None:
        status = self.get_query_argument("status", "queued")
        party = self.get_query_argument("party", "") or None
        text = self.get_query_argument("q", "").strip()
        after_arg = self.get_query_argument("after", "")
        after = wire.decode_cursor(after_arg) if after_arg else None
        views = self.ctx.views
        scanned = None
        if text:
            # In store calls of 1,000 tasks each, so that none runs into the store deadline.
            tasks, scanned, at = [], 0, None
            while scanned < SEARCH_SCAN and len(tasks) < PAGE:
                want = PAGE - len(tasks)
                found, read, at = await self.call(
                    lambda at=at, want=want: views.search(
                        text, status=status, party=party, limit=want, scan=1000, after=at)
                )  # fmt: skip
                tasks += found
                scanned += read
                if at is None:
                    break
        else:
            tasks = await self.call(
                lambda: views.list(status=status, party=party, limit=PAGE, after=after)
            )
        live = await self.live()
        now = system_now()
        stats = await self.ctx.stats.get()
        self.render_page(
            "tasks.html",
            tasks=[(t, waiting(t, live, now)) for t in tasks],
            status=status,
            party=party or "",
            q=text,
            scanned=scanned,
            scan_limit=SEARCH_SCAN,
            parties=sorted(stats["parties"]),
            statuses=[s.value for s in Status],
            next=wire.encode_cursor(tasks[-1]) if len(tasks) == PAGE and not text else None,
        )


class TaskPage(UIHandler):
    """``/ui/task/<id>``: everything about one task, with Run now and Delete."""

    async def get(self, task_id: str) -> None:
        task: Task = await self.call(self.ctx.queue.get, wire.check_id(task_id))
        live = await self.live()
        self.render_page(
            "task.html",
            task=task,
            why=waiting(task, live, system_now()),
            data=json.dumps(task.data, indent=2, ensure_ascii=False, default=str),
            result=json.dumps(task.result, indent=2, ensure_ascii=False, default=str),
            message=self.get_query_argument("m", ""),
        )


class TaskAction(UIHandler):
    """``POST /ui/task/<id>/run`` and ``.../delete``: the actions, then back to the task page."""

    async def post(self, task_id: str, action: str) -> None:
        if not self.form():
            return
        task_id = wire.check_id(task_id)
        ctx = self.ctx
        if action == "run":
            async with ctx.force_runs.request():
                task = await ctx.calls(ctx.queue.claim_now, task_id)
                ctx.stats.wrote()
                await ctx.runner(task)
            message = "ran it now"
        else:
            await ctx.calls(ctx.queue.delete, task_id)
            message = "deleted it"
        ctx.stats.wrote()
        self.redirect(f"/ui/task/{task_id}?m={message.replace(' ', '+')}", status=303)


class SchedulersPage(UIHandler):
    """``/ui/schedulers``: the live schedulers and what each worker runs."""

    async def get(self) -> None:
        live = await self.live()
        self.render_page("schedulers.html", schedulers=live.schedulers)


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def routes(ctx: Context) -> list[tuple[Any, ...]]:
    """The dashboard's routes for ``make_app``."""
    from tornado.web import StaticFileHandler

    shared = {"ctx": ctx, "sampler": Sampler(), "secret": secrets.token_bytes(32)}
    return [
        (r"/ui/?", OverviewHandler, shared),
        (r"/ui/login/?", LoginHandler, shared),
        (r"/ui/logout/?", LogoutHandler, shared),
        (r"/ui/tasks/?", TasksHandler, shared),
        (r"/ui/task/([^/]*)/(run|delete)", TaskAction, shared),
        (r"/ui/task/([^/]*)/?", TaskPage, shared),
        (r"/ui/schedulers/?", SchedulersPage, shared),
        (r"/ui/static/(.*)", StaticFileHandler, {"path": str(STATIC)}),
    ]
