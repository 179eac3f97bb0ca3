"""Run the HTTP server: check the address, fork the force-run pool, bind, serve until a signal.

Owns the listening sockets (TCP, or a Unix socket of mode 0660 whose stale file is replaced but
whose live server is never displaced), the refusal of a non-loopback address without a token,
the warm worker pool behind ``POST /task/<id>`` and the clean stop on SIGINT or SIGTERM. One of
Party's entry points, so it may install signal handlers. Imports tornado, ``config``,
``registry``, ``stores``, ``queue``, ``pool`` and ``server.app``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
import stat

from tornado.netutil import bind_sockets

from .. import log
from ..config import Settings
from ..errors import ConfigError
from ..model import Status, Task
from ..pool import owner
from ..pool.forcerun import ForceRunClient, ForceRunUnavailable
from ..queue import TaskQueue
from ..registry import Registry, discover
from ..stores import open_store
from .app import make_app
from .connections import PartyHTTPServer, raise_fd_limit
from .handlers import DRAIN_LIMIT, ApiError
from .inflight import ForceRuns

logger = logging.getLogger(log.SERVER)

#: Warm worker processes the server keeps for force-runs (POST /task/<id>).
FORCE_RUN_WORKERS = 2
SOCKET_MODE = 0o660


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(settings: Settings) -> None:
    """Refuse a TCP address reachable from other machines unless a token or --insecure is set."""
    if settings.socket or settings.token or settings.insecure:
        return
    if not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host}:{settings.port} without a token: anyone who "
            "can reach that address could add and run tasks. Set PARTY_TOKEN (or --token), listen "
            "on 127.0.0.1 or a Unix socket (--socket), or pass --insecure if the network is "
            "trusted"
        )


def socket_is_live(path: str) -> bool:
    """True when something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        return True  # cannot tell (permission, timeout): treat as live, never steal
    finally:
        probe.close()
    return True


def check_unix_path(path: str) -> None:
    """Refuse a path that holds a live server or a file that is not a socket."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError(
            f"--socket {path} exists and is not a socket; remove it or choose another path"
        )
    if socket_is_live(path):
        raise ConfigError(
            f"another server is already listening on {path}; stop it first or choose another "
            "--socket (a socket file is replaced only when nothing answers on it)"
        )


def bind_unix_socket(path: str, mode: int = SOCKET_MODE, backlog: int = 128) -> socket.socket:
    """Bind a listening Unix socket at ``path`` with file mode ``mode``.

    A stale socket file (nothing answers on it) is replaced; a live one or any other file raises
    ``ConfigError``. The umask is set before ``bind`` so the file is never wider than ``mode``.
    """
    check_unix_path(path)
    if os.path.lexists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind Unix socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Bind listening TCP sockets on ``host:port``; ``ConfigError`` says why it failed."""
    try:
        return bind_sockets(port, address=host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status.

    Raises ``ConfigError`` (bad address, live socket) before anything is started.
    """
    check_exposure(settings)
    if settings.socket:
        check_unix_path(settings.socket)
    registry = discover(settings.tasks)
    # Created and migrated once, before any worker exists to race for it; closed before the fork.
    open_store(settings.store).close()
    # Fork the force-run service first, before any thread, store connection or listening socket
    # exists: it forks (and replaces) the warm workers itself, so this process never forks again.
    pool = ForceRunClient(FORCE_RUN_WORKERS, settings.store, registry, lease_seconds=settings.lease)
    pool.start()
    store = None
    bound: os.stat_result | None = None
    try:
        store = open_store(settings.store)
        # Force-runs are claimed here and run by the service's workers, which die with this
        # process: its identity is the owner of their leases.
        queue = TaskQueue(store, registry, lease_seconds=settings.lease, owner=owner.identity())
        if settings.socket:
            sockets = [bind_unix_socket(settings.socket)]
            bound = os.stat(settings.socket)
            where = f"unix:{settings.socket}"
        else:
            sockets = bind_tcp(settings.host, settings.port)
            port = sockets[0].getsockname()[1]
            where = f"http://{settings.host}:{port}"
        logger.info(
            "listening on %s (store %s, %d handlers: %s)",
            where,
            log.redact(settings.store),
            len(registry),
            ", ".join(registry.names),
        )
        return asyncio.run(_serve(settings, queue, registry, pool, sockets))
    finally:
        pool.stop()
        if store is not None:
            store.close()
        if bound is not None and settings.socket:
            _remove_own_socket(settings.socket, bound)
        logger.info("server stopped")


class ForceRunner:
    """The force-run as the request handlers call it: runs a claimed task through the service and
    turns a run that did not happen into a 503 saying so."""

    def __init__(self, client: ForceRunClient) -> None:
        self.client = client

    async def __call__(self, task: Task) -> Status | None:
        try:
            return await self.client.run(task)
        except ForceRunUnavailable as exc:
            raise ApiError(503, f"task {task.id} was not run: {exc}") from None


async def _serve(
    settings: Settings,
    queue: TaskQueue,
    registry: Registry,
    pool: ForceRunClient,
    sockets: list[socket.socket],
) -> int:
    loop = asyncio.get_running_loop()
    pool.attach(loop)
    force_runs = ForceRuns()
    app = make_app(queue, registry, settings, ForceRunner(pool), force_runs)
    raise_fd_limit()
    # Idle and head timeouts, and a calm accept loop when descriptors run out (connections).
    server = PartyHTTPServer(app, max_body_size=settings.max_body + DRAIN_LIMIT)
    server.add_sockets(sockets)
    stopping = asyncio.Event()
    abort = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            logger.info("received %s again: stopping now", signal.Signals(signum).name)
            abort.set()
            return
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    try:
        await stopping.wait()
        server.stop()  # no new connections; force-runs in flight may finish within the grace
        await force_runs.drain(settings.grace, abort)  # their claims included
        pool.stop(0.0)  # what still runs is handed back; its requests are answered 503
        await asyncio.sleep(0.05)  # let interrupted requests write their answer
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        server.stop()
        await server.close_all_connections()
    return 0


def _remove_own_socket(path: str, bound: os.stat_result) -> None:
    """Remove the socket file unless another server has replaced it since."""
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return
    if (current.st_dev, current.st_ino) == (bound.st_dev, bound.st_ino):
        os.unlink(path)
