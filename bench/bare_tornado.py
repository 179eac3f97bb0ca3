"""A bare Tornado JSON POST handler: the ceiling the enqueue figures are divided by.

``python bench/bare_tornado.py --host 127.0.0.1 --port N`` or ``--socket PATH``: one process that
parses the same ``{"tasks": [...]}`` body Party's ``POST /tasks`` receives and answers 201 with a
small JSON, with the same listen options as ``python -m party serve`` (TCP via ``bind_sockets``, a
Unix socket via ``bind_unix_socket``). ``GET /health`` answers 200 so the harness can wait for it.
Standard library and tornado only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets, bind_unix_socket
from tornado.web import Application, RequestHandler


class TasksHandler(RequestHandler):
    """Parse the body, count its tasks, answer 201 with a small JSON."""

    def post(self) -> None:
        body = json.loads(self.request.body)
        self.set_status(201)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"added": len(body["tasks"])}))


class HealthHandler(RequestHandler):
    """``GET /health``: always 200."""

    def get(self) -> None:
        self.finish({"status": "ok"})


async def serve(host: str, port: int, socket_path: str | None) -> None:
    """Serve until SIGINT or SIGTERM."""
    app = Application([(r"/tasks", TasksHandler), (r"/health", HealthHandler)])
    server = HTTPServer(app)
    if socket_path:
        server.add_sockets([bind_unix_socket(socket_path, mode=0o660)])
    else:
        server.add_sockets(bind_sockets(port, address=host))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8033)
    parser.add_argument("--socket", default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.socket))


if __name__ == "__main__":
    main()
