"""The HTTP server's connections: idle and slow-head timeouts, and running out of descriptors.

``PartyHTTPServer`` is Tornado's ``HTTPServer`` with four additions, so that held-open or
trickling connections cannot starve the server (PRODUCT.md, "The server under stress and
attack"):

- an idle kept-alive connection is closed after ``IDLE_TIMEOUT`` (Tornado's
  ``idle_connection_timeout``, which is also its wait for the first byte of the next request);
- a request head that has started to arrive but is not complete within ``HEAD_TIMEOUT`` is
  dropped (Tornado times only the whole wait, idle time included, so a sweep once a second looks
  at the connections waiting for a head that hold unread bytes);
- a request body that has not arrived whole within ``BODY_TIMEOUT`` of its head is dropped with
  its connection (Tornado's ``body_timeout``; it has none by default, and a client that sent a
  head and part of its body could hold a connection and its buffered bytes for ever);
- when ``accept`` fails for want of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM), Tornado's
  accept loop would raise on every readiness of the listening socket, logging a traceback each
  time while the loop spins: here the failure is logged once (one line a minute at most), accepting
  pauses for
  ``ACCEPT_PAUSE`` and resumes by itself, and the return to normal is logged with the count of
  refused attempts.

``raise_fd_limit`` lifts the soft descriptor limit to the hard one at start. Imports tornado.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import _DEFAULT_BACKLOG

from .. import log

logger = logging.getLogger(log.SERVER)

#: Seconds a kept-alive connection may wait idle for its next request.
IDLE_TIMEOUT = 60.0
#: Seconds a request head may take from its first byte to its blank line.
HEAD_TIMEOUT = 10.0
#: Seconds a request body may take to arrive whole (8 MiB at about 1 Mbit/s).
BODY_TIMEOUT = 60.0
#: Seconds accepting pauses after ``accept`` found no descriptor left.
ACCEPT_PAUSE = 0.5
#: Seconds between two log lines about a shortage of descriptors (a shortage that ends and comes
#: back at once is one episode for the log).
LOG_EVERY = 60.0
#: ``accept`` errors that mean "no resources now", not "this connection failed".
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_fd_limit() -> int:
    """Raise the soft limit of open descriptors to the hard one; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


class PartyHTTPServer(HTTPServer):
    """``HTTPServer`` with the idle, head and body timeouts and the calm accept loop described
    above."""

    def initialize(  # type: ignore[override]
        self,
        request_callback: Any,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().initialize(
            request_callback,
            idle_connection_timeout=idle_timeout,
            body_timeout=body_timeout,
            **kwargs,
        )
        self.head_timeout = head_timeout
        # Connections waiting for a request head: connection -> monotonic time its first byte
        # was seen (None: nothing yet, the idle timeout applies).
        self._heads: dict[Any, float | None] = {}
        self._sweeper = PeriodicCallback(self._sweep, min(1000.0, head_timeout * 250))
        self._sweeper.start()
        self._accept_state = _AcceptState()

    # -- head timeout -----------------------------------------------------------------------

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        self._heads[request_conn] = None
        return _HeadWatch(delegate, request_conn, self._heads)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn, first_byte in list(self._heads.items()):
            stream = getattr(conn, "stream", None)
            if stream is None or stream.closed():
                self._heads.pop(conn, None)
                continue
            if first_byte is None:
                # Tornado keeps no public count of unread bytes; without it only the idle
                # timeout applies.
                if getattr(stream, "_read_buffer_size", 0):
                    self._heads[conn] = now
            elif now - first_byte > self.head_timeout:
                self._heads.pop(conn, None)
                logger.info(
                    "dropped a connection whose request head did not arrive within %g s",
                    self.head_timeout,
                )
                stream.close()

    # -- accepting --------------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = _accept_calmly(
                sock, self._handle_connection, self._accept_state
            )

    def stop(self) -> None:
        self._sweeper.stop()
        super().stop()


class _HeadWatch(httputil.HTTPMessageDelegate):
    """Forwards to the application's delegate; its head has arrived once ``headers_received``."""

    def __init__(
        self,
        delegate: httputil.HTTPMessageDelegate,
        conn: httputil.HTTPConnection,
        heads: dict[Any, float | None],
    ) -> None:
        self.delegate = delegate
        self.conn = conn
        self.heads = heads

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self.heads.pop(self.conn, None)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> Awaitable[None] | None:  # type: ignore[override]
        return self.delegate.finish()

    def on_connection_close(self) -> None:
        self.heads.pop(self.conn, None)
        self.delegate.on_connection_close()


class _AcceptState:
    """What the accept loops of one server share: whether they are out of descriptors."""

    def __init__(self) -> None:
        self.refused = 0  # accept attempts refused since the shortage began
        self.since: float | None = None  # monotonic start of the shortage
        self.logged = False  # whether this shortage is logged (at most one per LOG_EVERY)
        self.last_logged = -1e9


def _accept_calmly(
    sock: socket.socket,
    callback: Callable[[socket.socket, Any], None],
    state: _AcceptState,
) -> Callable[[], None]:
    """``tornado.netutil.add_accept_handler``, but a shortage of descriptors pauses accepting
    for ``ACCEPT_PAUSE`` with one log line, instead of a traceback per attempt."""
    io_loop = IOLoop.current()
    removed = False
    paused = False

    def resume() -> None:
        nonlocal paused
        if removed or not paused:
            return
        paused = False
        io_loop.add_handler(sock, on_readable, IOLoop.READ)

    def on_readable(fd: Any, events: int) -> None:
        nonlocal paused
        for _ in range(_DEFAULT_BACKLOG):
            if removed or paused:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                now = time.monotonic()
                if state.since is None:
                    state.since = now
                    state.logged = now - state.last_logged >= LOG_EVERY
                if state.logged and state.last_logged < state.since:
                    state.last_logged = now
                    logger.error(
                        "cannot accept connections: %s (open descriptors limit %d); pausing "
                        "accepts for %g s at a time until descriptors are free",
                        exc.strerror,
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                        ACCEPT_PAUSE,
                    )
                state.refused += 1
                paused = True
                io_loop.remove_handler(sock)
                io_loop.call_later(ACCEPT_PAUSE, resume)
                return
            if state.since is not None and not state.logged:
                state.since, state.refused = None, 0
            elif state.since is not None:
                logger.warning(
                    "accepting connections again after %.1f s (%d attempts refused)",
                    time.monotonic() - state.since,
                    state.refused,
                )
                state.since, state.refused = None, 0
            callback(connection, address)

    def remove() -> None:
        nonlocal removed
        if not paused:
            io_loop.remove_handler(sock)
        removed = True

    io_loop.add_handler(sock, on_readable, IOLoop.READ)
    return remove
