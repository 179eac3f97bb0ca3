"""The route table: ``make_app`` builds the Tornado application from injected parts.

Nothing here opens a store, forks or binds: the caller (``server.listen`` or a test) passes the
queue, the settings and the force-run runner in, and each handler receives them through
``initialize`` (``AddTasks``, which serves the ordinary ``POST /tasks``, through its constructor).
The store threads and the cached probes are made here too, one set per application. Imports
tornado, ``config``, ``queue`` and ``server.handlers``/``adding``/``offload``/``probes``/
``pipeline``. Each route here has its ``Operation`` in ``server.operations`` (tests/test_openapi.py
holds them together).
"""

from __future__ import annotations

from typing import Any

from tornado.httputil import HTTPMessageDelegate, HTTPServerRequest
from tornado.web import Application, RequestHandler

from ..config import Settings
from ..metrics import ServerCounters
from ..queue import TaskQueue
from ..registry import Registry
from ..views import Views
from . import dashboard
from .adding import AddTasks
from .handlers import (
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    OpenAPIHandler,
    Runner,
    SchedulersHandler,
    SchedulesHandler,
    StatsHandler,
    TaskHandler,
    TasksHandler,
)
from .inflight import ForceRuns
from .liveness import LiveCache
from .offload import StoreCalls
from .pipeline import Context, log_request
from .probes import HealthCheck, StatsCache


def make_app(
    queue: TaskQueue,
    registry: Registry,
    settings: Settings,
    runner: Runner,
    force_runs: ForceRuns | None = None,
) -> Application:
    """The Party HTTP application over ``queue``; ``runner`` runs a claimed task for a force-run,
    and ``force_runs`` counts those requests in flight (the caller drains it when stopping).

    ``registry`` is the queue's (the only lookup of handler names sent over HTTP); it is taken
    here so a caller cannot wire a server to a queue with different handlers by mistake.
    """
    if registry is not queue.registry:
        raise ValueError("make_app: the registry must be the queue's own")
    views = Views(queue.store, registry, clock=queue.clock)
    ctx = Context(
        queue=queue,
        runner=runner,
        calls=StoreCalls(queue.store),
        stats=StatsCache(views.stats),
        health=HealthCheck(queue.store.check_writable),
        views=views,
        live=LiveCache(views),
        counters=ServerCounters(),
        max_body=settings.max_body,
        max_batch=settings.max_batch,
        force_runs=ForceRuns() if force_runs is None else force_runs,
        token=settings.token,
        insecure=settings.insecure,
    )
    shared = {"ctx": ctx}
    return PartyApplication(
        [
            (r"/tasks/?", TasksHandler, shared),
            (r"/task/([^/]*)/?", TaskHandler, shared),
            (r"/stats/?", StatsHandler, shared),
            (r"/health/?", HealthHandler, shared),
            (r"/schedulers/?", SchedulersHandler, shared),
            (r"/schedules/?", SchedulesHandler, shared),
            (r"/metrics/?", MetricsHandler, shared),
            *dashboard.routes(ctx),
            (r"/openapi\.json", OpenAPIHandler, shared),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=shared,
        log_function=log_request,
        compress_response=False,
    )


class PartyApplication(Application):
    """The route table, with the ordinary ``POST /tasks`` handed to ``AddTasks`` (see there)."""

    def get_handler_delegate(
        self,
        request: HTTPServerRequest,
        target_class: type[RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> HTTPMessageDelegate:
        if target_class is TasksHandler and request.method == "POST" and target_kwargs:
            ctx = target_kwargs["ctx"]
            if AddTasks.accepts(request, ctx):
                return AddTasks(request, ctx)
        return super().get_handler_delegate(
            request, target_class, target_kwargs, path_args, path_kwargs
        )
