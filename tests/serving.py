"""Servers for the HTTP tests: a real ``python -m party serve`` process, or the app in a thread;
and the contract every answer they give is held to.

``ServerProcess`` is the server as users run it (its own interpreter, its warm force-run pool,
signals). ``ServerThread`` runs ``make_app`` on a Unix socket and a TCP port inside the test
process (httpx's ``serve_in_thread``), with force-runs executed inline in a thread, for the
client and command-line tests that need a server but not its processes.

``Contract`` checks an answer against the OpenAPI document (``party.server.openapi``);
``watch_answers`` hooks ``http.client`` so that every answer any test receives (through
``party.client``, ``http.client`` or ``UnixHTTPConnection``) is checked, and the autouse fixture
``answers_follow_the_contract`` (conftest.py) fails the test that received one that drifts.
"""

import asyncio
import copy
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from party.client import BlockingHTTPClient, PartyClientError

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = Path(__file__).resolve().parent / "handlers"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m party serve`` on ``store`` (a path), over ``sock`` (a path) or TCP."""

    def __init__(self, store, *, sock=None, host="127.0.0.1", port=None, args=(), env=None):
        self.store = Path(store)
        self.sock = str(sock) if sock else None
        self.host = host
        self.port = None if sock else (port or free_port())
        self.log_path = self.store.parent / f"server-{self.sock and 'unix' or self.port}.log"
        command = [sys.executable, "-m", "party", "serve", "--store", f"sqlite:///{self.store}",
                   "--tasks", str(HANDLERS), "--log-level", "INFO", *args]  # fmt: skip
        command += (
            ["--socket", self.sock] if self.sock else ["--host", host, "--port", str(self.port)]
        )
        self.command = command
        self.env = {**os.environ, **(env or {})}
        for name in ("PARTY_TOKEN", "PARTY_SOCKET", "PARTY_HOST", "PARTY_PORT", "PARTY_INSECURE"):
            if env is None or name not in env:
                self.env.pop(name, None)
        self.proc = None

    @property
    def address(self):
        return self.sock or f"{self.host}:{self.port}"

    def start(self, wait=True, token=None, preexec_fn=None):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )  # fmt: skip
        if wait:
            self.wait_ready(token)
        return self

    def wait_ready(self, token=None, timeout=15.0):
        deadline = time.monotonic() + timeout
        with BlockingHTTPClient(self.address, token=token, timeout=2) as con:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
                try:
                    con("/health")
                    return
                except PartyClientError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"server did not answer:\n{self.log()}") from None
                    time.sleep(0.05)

    def client(self, **kwargs):
        return BlockingHTTPClient(self.address, **kwargs)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        return None if self.proc is None else self.proc.returncode


class ServerThread:
    """The Party app served inside this process on ``sock`` and a TCP port, until ``stop``."""

    def __init__(self, store_path, sock, *, token=None, max_body=1 << 20, max_batch=100,
                 **server_options):  # fmt: skip
        from party.config import Settings
        from party.queue import TaskQueue
        from party.registry import discover
        from party.stores.sqlite import SqliteStore

        self.sock = str(sock)
        self.port = free_port()
        self.server_options = server_options  # PartyHTTPServer's (idle, head and body timeouts)
        self.settings = Settings(token=token, max_body=max_body, max_batch=max_batch)
        self.queue = TaskQueue(SqliteStore(store_path), discover([str(HANDLERS)]))
        from party.server.inflight import ForceRuns

        self.force_runs = ForceRuns()  # the force-runs in flight, drained as a stopping server does
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        self._started.wait(10)
        return self

    def _run(self):
        asyncio.run(self._serve())

    async def _serve(self):
        from party.runner import execute
        from party.server.app import make_app
        from party.server.connections import PartyHTTPServer
        from party.server.listen import bind_tcp, bind_unix_socket

        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(2)

        async def runner(task):  # stands in for the warm pool: same claim and record rules
            _, status = await loop.run_in_executor(executor, execute, self.queue, task)
            return status

        app = make_app(self.queue, self.queue.registry, self.settings, runner, self.force_runs)
        self.server = PartyHTTPServer(app, **self.server_options)
        self.server.add_sockets([bind_unix_socket(self.sock), *bind_tcp("127.0.0.1", self.port)])
        self.loop = loop
        self._stop = asyncio.Event()
        self._started.set()
        await self._stop.wait()
        self.server.stop()
        await self.server.close_all_connections()
        executor.shutdown()

    def close_connections(self):
        """Close every open connection from the server side (as an idle timeout would)."""
        done = threading.Event()

        async def close():
            await self.server.close_all_connections()
            done.set()

        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(close()))
        done.wait(5)

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.queue.store.close()


class Contract:
    """The answers the OpenAPI document allows. Stricter than the document in one way: an object
    of a declared shape carries no undeclared key, so a field added to the wire without being
    declared in ``wire`` fails a test (the document itself lets clients expect more keys)."""

    def __init__(self, document):
        # jsonschema_rs: the pure-Python jsonschema takes about 0.7 ms per task of an answer,
        # seconds for the large batches some tests add; this one, about 70 times less.
        from jsonschema_rs import Draft202012Validator

        self._validator_class = Draft202012Validator
        self.document = _closed(copy.deepcopy(document))
        self._routes = [
            (re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]*", re.escape(path)) + "/?$"), ops)
            for path, ops in self.document["paths"].items()
        ]
        self._validators = {}

    def violation(self, method, target, status, content_type, body):
        """What is wrong with this answer to ``method target``, or None when it conforms."""
        path = target.split("?", 1)[0]
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        ops = next((ops for pattern, ops in self._routes if pattern.match(path)), None)
        operation = None if ops is None else ops.get(method.lower())
        where = f"{method} {target[:100]} answered {status}"
        if operation is None:
            # No such endpoint or method: an error (404, 405, or a refusal before routing).
            if not (400 <= status < 500 or status == 503):
                return f"{where}: an undocumented endpoint must answer a 4xx or 503"
            key = ("error",)
            pointer = "#/components/schemas/Error"
        else:
            if str(status) not in operation["responses"]:
                return f"{where}, a status the document does not list for it"
            key = (path, method, status)
            answer = operation["responses"][str(status)]
            if "application/json" not in answer["content"]:
                # A text answer (metrics, HTML): its media type is all there is to check.
                medias = {m.split(";")[0] for m in answer["content"]}
                if (content_type or "").split(";")[0].strip() not in medias:
                    return f"{where} with Content-Type {content_type!r}, not one of {medias}"
                return None
            pointer = answer["content"]["application/json"]["schema"]
            pointer = pointer["$ref"] if set(pointer) == {"$ref"} else pointer
        if method.upper() == "HEAD":
            return None
        if not (content_type or "").startswith("application/json"):
            return f"{where} with Content-Type {content_type!r}, not JSON"
        try:
            value = json.loads(body)
        except ValueError:
            return f"{where} with a body that is not JSON: {body[:200]!r}"
        validator = self._validators.get(key)
        if validator is None:
            schema = pointer if isinstance(pointer, dict) else {"$ref": pointer}
            schema = {**schema, "components": self.document["components"]}
            validator = self._validators[key] = self._validator_class(schema)
        errors = list(validator.iter_errors(value))
        if errors:
            shown = "; ".join(
                f"at {'/'.join(map(str, e.instance_path)) or 'top'}: {e.message[:300]}"
                for e in errors[:3]
            )
            return f"{where} with a body that breaks the document: {shown}"
        return None


def _closed(node):
    """``node`` with every declared object schema closed to undeclared keys (in place)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _closed(value)
    elif isinstance(node, list):
        for value in node:
            _closed(value)
    return node


_contract = None
#: Violations seen since the last ``take_violations``.
_violations = []


def contract():
    """The ``Contract`` of the document this checkout serves (built once)."""
    global _contract
    if _contract is None:
        from party.server.openapi import document

        _contract = Contract(document())
    return _contract


def take_violations():
    """The answers that broke the contract since the last call."""
    seen = list(_violations)
    del _violations[: len(seen)]
    return seen


def watch_answers():
    """Check every answer ``http.client`` receives in this process against the document (once;
    idempotent). Connections of other libraries built on it (urllib3: the fuzzer's) are left
    alone. The body is read at once and put back, so callers read it as usual."""
    if getattr(http.client.HTTPConnection, "_party_watched", False):
        return
    putrequest = http.client.HTTPConnection.putrequest
    getresponse = http.client.HTTPConnection.getresponse

    def watched_putrequest(self, method, url, *args, **kwargs):
        self._party_request = (method, url)
        return putrequest(self, method, url, *args, **kwargs)

    def watched_getresponse(self):
        response = getresponse(self)
        request = getattr(self, "_party_request", None)
        if request is None or type(self).__module__.startswith("urllib3"):
            return response
        body = response.read()
        if body:
            response.fp = io.BytesIO(body)
            response.length = len(body)
            response.chunked = False
        problem = contract().violation(
            request[0], request[1], response.status, response.getheader("Content-Type"), body
        )
        if problem is not None:
            _violations.append(problem)
        return response

    http.client.HTTPConnection.putrequest = watched_putrequest
    http.client.HTTPConnection.getresponse = watched_getresponse
    http.client.HTTPConnection._party_watched = True
