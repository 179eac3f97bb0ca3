"""The route table: ``make_app`` builds the Tornado application from injected parts.

Nothing here opens a store, forks or binds: the caller (``server.listen`` or a test) passes the
queue, the settings and the force-run runner in, and each handler receives them through
``initialize``. Imports tornado, ``config``, ``queue`` and ``server.handlers``.
"""

from __future__ import annotations

from tornado.web import Application

from ..config import Settings
from ..queue import TaskQueue
from ..registry import Registry
from .handlers import (
    Context,
    HealthHandler,
    NotFoundHandler,
    Runner,
    StatsHandler,
    TaskHandler,
    TasksHandler,
    log_request,
)


def make_app(
    queue: TaskQueue, registry: Registry, settings: Settings, runner: Runner
) -> Application:
    """The Party HTTP application over ``queue``; ``runner`` runs a claimed task for a force-run.

    ``registry`` is the queue's (the only lookup of handler names sent over HTTP); it is taken
    here so a caller cannot wire a server to a queue with different handlers by mistake.
    """
    if registry is not queue.registry:
        raise ValueError("make_app: the registry must be the queue's own")
    ctx = Context(
        queue=queue,
        runner=runner,
        max_body=settings.max_body,
        max_batch=settings.max_batch,
        token=settings.token,
    )
    shared = {"ctx": ctx}
    return Application(
        [
            (r"/tasks/?", TasksHandler, shared),
            (r"/task/([^/]*)/?", TaskHandler, shared),
            (r"/stats/?", StatsHandler, shared),
            (r"/health/?", HealthHandler, shared),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=shared,
        log_function=log_request,
        compress_response=False,
    )
