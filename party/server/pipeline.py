"""One request pipeline: the checks every request passes before its body is read, and the one table
from error class to HTTP status.

``check_request`` is the only gate, used by ``JSONHandler.prepare`` and by the fast ``POST /tasks``
path alike: the token (401), the ``Host`` and ``Origin`` of a tokenless server (403, against DNS
rebinding and cross-site requests from a browser on the same machine), and the declared size
(413). ``error_answer`` turns any exception into the status and ``{"error": ...}`` body the client
sees, through ``STATUS_OF``; no message carries a store URL's password (``log.redact``).
``log_request`` and ``log_access`` write the one line of every request, whichever path served it,
and ``log_failure`` logs an exception that is a bug. Imports tornado's types, ``errors``, ``log``
and nothing of the queue.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest, responses
from tornado.web import HTTPError, RequestHandler

from ..errors import (
    Conflict,
    KeyMismatch,
    NotFound,
    StoreUnavailable,
    TaskException,
    ValidationError,
)
from ..log import SERVER, redact

if TYPE_CHECKING:
    from ..metrics import ServerCounters
    from ..queue import TaskQueue
    from ..views import Views
    from .handlers import Runner
    from .inflight import ForceRuns
    from .liveness import LiveCache
    from .offload import StoreCalls
    from .probes import HealthCheck, StatsCache

logger = logging.getLogger(SERVER)

#: How far past ``max_body`` a declared body is still read (and dropped) so the client, still
#: sending, can read the 413; beyond it the connection is closed after the answer.
DRAIN_LIMIT = 64 * 1024 * 1024

#: The status of each error class (the nearest class in an exception's MRO wins).
STATUS_OF: dict[type[BaseException], int] = {
    ValidationError: 400,
    NotFound: 404,
    Conflict: 409,
    KeyMismatch: 422,
    TaskException: 400,
    StoreUnavailable: 503,
}

#: Methods that change state: refused when they carry an ``Origin`` of another site.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TCP = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class Context:
    """What every handler shares: the queue and the threads that call it, the cached probes, the
    limits, the token, the force-run runner and the force-runs in flight."""

    queue: TaskQueue
    runner: Runner
    calls: StoreCalls
    stats: StatsCache
    health: HealthCheck
    #: The reads (``views``), the live schedulers for ``waiting``, and this server's counters.
    views: Views
    live: LiveCache
    counters: ServerCounters
    max_body: int
    max_batch: int
    #: Force-run requests in flight, which a stopping server waits for.
    force_runs: ForceRuns
    token: str | None = None
    #: ``--insecure``: a tokenless server skips the ``Host`` check (it keeps the ``Origin`` one).
    insecure: bool = False

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


def check_request(request: HTTPServerRequest, ctx: Context) -> int | None:
    """Raise ``ApiError`` (401, 403 or 413) unless ``request`` may be served; return its declared
    ``Content-Length`` (None when it declares none). Reads nothing of the body."""
    headers = request.headers
    if ctx.token is None:
        _check_host_and_origin(request, ctx)
    elif request.path.rstrip("/") != "/health":
        header = headers.get("Authorization")
        expected = ctx.authorization
        assert expected is not None
        if header is None:
            raise unauthorized("this server requires a token: send 'Authorization: Bearer <token>'")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer":  # a scheme is case-insensitive (RFC 9110, 11.1)
            header = "Bearer " + given
        if not hmac.compare_digest(header.encode("utf-8", "replace"), expected):
            raise unauthorized(
                "wrong token: send 'Authorization: Bearer <token>' with the server's token"
            )
    declared = headers.get("Content-Length")
    if declared is None or not declared.isdigit():
        return None  # none, or chunked: the handler counts what arrives
    size = int(declared) if len(declared) <= 18 else None
    if size is None or size > ctx.max_body + DRAIN_LIMIT:
        raise body_too_large(declared if size is None else size, ctx.max_body)
    return size


def unauthorized(message: str) -> ApiError:
    """A 401 that names the scheme (``WWW-Authenticate``)."""
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="party"'})


def body_too_large(size: int | str, max_body: int) -> ApiError:
    """The 413 of a body of ``size`` bytes."""
    return ApiError(
        413,
        f"request body of {size} bytes is over the limit of {max_body} bytes "
        "(--max-body / PARTY_MAX_BODY); send fewer tasks per request",
    )


def _check_host_and_origin(request: HTTPServerRequest, ctx: Context) -> None:
    headers = request.headers
    host = headers.get("Host")
    context = getattr(request.connection, "context", None)
    over_tcp = getattr(context, "address_family", None) in _TCP
    if over_tcp and not ctx.insecure and host is not None and not is_loopback_host(host):
        raise ApiError(
            403,
            f"Host {_shown(host)} is not a loopback name: this server has no token, so it answers "
            "only requests addressed to localhost, 127.0.0.1 or [::1] (a guard against DNS "
            "rebinding); use one of those, or set a token (PARTY_TOKEN / --token), or pass "
            "--insecure if the network is trusted",
        )
    origin = headers.get("Origin")
    if origin is not None and request.method in STATE_CHANGING:
        if not same_origin(origin, host):
            raise ApiError(
                403,
                f"a {request.method} from the web page of another origin ({_shown(origin)}) is "
                "refused: a server without a token does not let a browser page add, run or "
                "delete tasks; send the request without an Origin header (as scripts and the "
                "party client do), or set a token (PARTY_TOKEN / --token)",
            )


def is_loopback_host(host: str) -> bool:
    """True when a ``Host`` header names ``localhost`` or a loopback address (any port)."""
    name = _host_name(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def same_origin(origin: str, host: str | None) -> bool:
    """True when ``origin`` (an ``Origin`` header) names the site ``host`` (the ``Host`` header)."""
    if host is None or origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    name = _host_name(host)
    host_port = _host_port(host)
    return name == parts.hostname.lower() and (host_port or default) == (port or default)


_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$")


def _host_name(host: str) -> str | None:
    match = _HOST.match(host.strip())
    return None if match is None else match.group(1).strip("[]").lower().rstrip(".")


def _host_port(host: str) -> int | None:
    match = _HOST.match(host.strip())
    return None if match is None or match.group(2) is None else int(match.group(2))


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def status_of(exc: BaseException) -> int | None:
    """The status ``STATUS_OF`` gives ``exc``'s class or its nearest base; None if none."""
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            return status
    return None


def error_answer(
    exc: BaseException | None, status: int, reason: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The status and ``{"error": ...}`` body answering ``exc`` (``status`` when it has none of
    its own; ``reason`` names a bare Tornado ``HTTPError``)."""
    index = getattr(exc, "index", None)
    if isinstance(exc, ApiError):
        status, message = exc.status_code, exc.message
    elif exc is not None and (mapped := status_of(exc)) is not None:
        status = mapped
        message = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, StoreUnavailable):
            message = f"the store is unavailable: {redact(message)}"
    elif isinstance(exc, HTTPError):
        message = exc.log_message % exc.args if exc.log_message else (reason or exc.reason or "")
        message = message or responses.get(status, "error")
    elif status >= 500:
        kind = type(exc).__name__ if exc is not None else "error"
        message = (
            f"internal server error ({kind}: {redact(str(exc))}); this is a bug, see the server log"
        )
    else:
        message = reason or responses.get(status, "error")
    body: dict[str, Any] = {"error": message}
    if index is not None:
        body["index"] = index
    return status, body


def log_request(handler: RequestHandler) -> None:
    """The one log line of a request: status, method, path, duration and any error message."""
    ctx = getattr(handler, "ctx", None)
    log_access(
        handler.get_status(),
        handler.request,
        getattr(handler, "error_message", None),
        None if ctx is None else ctx.counters,
    )


def log_access(
    status: int,
    request: HTTPServerRequest,
    message: str | None,
    counters: ServerCounters | None = None,
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


def log_failure(request: HTTPServerRequest, exc: BaseException) -> None:
    """Log an exception that ended a request, unless it is an expected answer (4xx, 409...)."""
    if isinstance(exc, HTTPError | TaskException):
        return  # expected: the request's log line carries the message
    summary = f"{request.method} {request.path} ({request.remote_ip})"
    if isinstance(exc, StoreUnavailable):
        logger.warning("store unavailable during %s: %s", summary, exc)
        return
    logger.error("bug while serving %s", summary, exc_info=(type(exc), exc, exc.__traceback__))
