"""A blocking HTTP client for Party, in the seeds' call style: ``con(path, params, data, method)``.

``BlockingHTTPClient("/tmp/party.sock")`` talks over a Unix socket, ``BlockingHTTPClient(
"127.0.0.1:8032")`` or ``("http://host:port")`` over TCP. One connection is kept alive between
calls and reopened when the server has closed it. Request data is JSON with ``datetime`` values
sent as ISO 8601; the contract's timestamp fields of returned tasks come back as naive UTC
``datetime`` objects. A 4xx or 5xx answer raises ``PartyHTTPError`` with the status and the
server's message. Standard library only: it imports nothing from tornado, pymongo or party, so an
application can vendor this one file.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "BlockingHTTPClient",
    "PartyClientError",
    "PartyConnectionError",
    "PartyHTTPError",
    "TIMESTAMP_FIELDS",
]

DEFAULT_PORT = 8032
#: The header that makes ``POST /tasks`` safe to repeat (a repeat is answered from the first).
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Fields of a task on the wire that hold timestamps (decoded into naive UTC datetimes).
TIMESTAMP_FIELDS = ("timestamp", "created", "last_run_on", "started_on", "completed_on")


class PartyClientError(Exception):
    """Base of the client's errors."""


class PartyConnectionError(PartyClientError):
    """The server could not be reached, or the connection broke mid-request."""


class PartyHTTPError(PartyClientError):
    """The server answered 4xx or 5xx. ``status``, ``message`` (the server's ``error``), ``index``
    (the offending item of a batch, or None) and ``body`` (the decoded answer)."""

    def __init__(self, status: int, message: str, index: int | None = None, body: Any = None):
        self.status = status
        self.message = message
        self.index = index
        self.body = body
        where = f" (item {index})" if index is not None and f"item {index}" not in message else ""
        super().__init__(f"HTTP {status}: {message}{where}")


def _send_output(
    self: http.client.HTTPConnection, message_body: Any = None, encode_chunked: bool = False
) -> None:
    # http.client writes the head, then the body, in two sends: the server may wake on the head
    # alone and go back to its poll for the body. A bytes body goes in the same write here.
    if not isinstance(message_body, bytes) or encode_chunked:
        return http.client.HTTPConnection._send_output(self, message_body, encode_chunked)  # type: ignore[attr-defined]
    buffer: list[bytes] = self._buffer  # type: ignore[attr-defined]
    buffer.extend((b"", message_body))  # the blank line that ends the head, then the body
    data = b"\r\n".join(buffer)
    del buffer[:]
    self.send(data)
    return None


class HTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` sending a request's head and body in one write (TCP, with
    TCP_NODELAY as http.client sets it)."""

    _send_output = _send_output


class HTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` sending a request's head and body in one write."""

    _send_output = _send_output


class UnixHTTPConnection(HTTPConnection):
    """An ``HTTPConnection`` over a Unix domain socket at ``path``."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be sent as JSON")


def _parse_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def decode_task(task: dict[str, Any]) -> dict[str, Any]:
    """Turn the timestamp fields of one wire task into naive UTC datetimes, in place."""
    for name in TIMESTAMP_FIELDS:
        if name in task:
            task[name] = _parse_time(task[name])
    return task


def _decode_times(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and "_id" in item:
                decode_task(item)
    elif isinstance(value, dict):
        if "_id" in value:
            decode_task(value)
        elif isinstance(value.get("tasks"), list):
            _decode_times(value["tasks"])
    return value


class BlockingHTTPClient:
    """A Party client over one kept-alive connection; not thread-safe (one per thread).

    ``address``: a Unix socket path (``/tmp/party.sock``), ``host:port``, ``host`` (port 8032) or
    ``http://host:port``. ``token`` is sent as ``Authorization: Bearer <token>``. ``timeout``
    bounds each socket operation in seconds (a force-run waits for the task, so allow for it).

    A request on a kept-alive connection that the server turns out to have closed is sent again,
    once, on a new one. A ``POST /tasks`` sent there carries an ``Idempotency-Key`` (the caller's,
    else a random one when ``auto_keys``), so that if the first try did reach the server, the
    second is answered from it instead of adding the batch twice.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        timeout: float | None = 60.0,
        auto_keys: bool = True,
    ):
        self.address = address
        self.token = token
        self.timeout = timeout
        self.auto_keys = auto_keys
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"BlockingHTTPClient({self.address!r})"

    def _connect(self) -> http.client.HTTPConnection:
        address = self.address
        if address.startswith(("http://", "https://")):
            parts = urlsplit(address)
            host, port = parts.hostname or "127.0.0.1", parts.port
            if address.startswith("https://"):
                return HTTPSConnection(host, port, timeout=self.timeout)
            return HTTPConnection(host, port or DEFAULT_PORT, timeout=self.timeout)
        if address.startswith("unix:"):
            return UnixHTTPConnection(address[len("unix:") :], timeout=self.timeout)
        if "/" in address or address.endswith(".sock"):
            return UnixHTTPConnection(address, timeout=self.timeout)
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
        return HTTPConnection(
            host.strip("[]") or "127.0.0.1",
            int(port) if port else DEFAULT_PORT,
            timeout=self.timeout,
        )

    def close(self) -> None:
        """Close the kept-alive connection (the next call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> BlockingHTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        method: str = "GET",
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer (tasks' timestamps as datetimes).

        ``params`` becomes the query string (None values are left out); ``data`` is sent as the
        JSON body; ``idempotency_key`` as the ``Idempotency-Key`` header (``POST /tasks``: a
        repeat with the same key and body within 24 h adds nothing and gets the first answer).
        Raises ``PartyHTTPError`` on a 4xx/5xx answer and ``PartyConnectionError`` when the
        server cannot be reached.
        """
        return _decode_times(
            self.request(path, params, data, method, idempotency_key=idempotency_key)
        )

    def request(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        method: str = "GET",
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """As calling the client, but the answer's timestamps stay ISO strings (raw JSON)."""
        method = method.upper()
        retry_key = None
        if idempotency_key is None and self.auto_keys and method == "POST" and path == "/tasks":
            retry_key = uuid.uuid4().hex  # sent only where a retry may follow (see _send)
        if params:
            query = urlencode({k: v for k, v in params.items() if v is not None})
            if query:
                path = f"{path}?{query}"
        body = None
        headers = self._headers
        if data is not None:
            body = json.dumps(data, default=_default, separators=(",", ":")).encode()
            headers = {**headers, "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers = {**headers, IDEMPOTENCY_HEADER: idempotency_key}
        status, raw = self._send(method, path, body, headers, retry_key)
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        if status >= 400:
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                raise PartyHTTPError(status, answer["error"], answer.get("index"), answer)
            text = raw.decode("utf-8", "replace").strip()[:200] or http.client.responses.get(
                status, "error"
            )
            raise PartyHTTPError(status, text, None, answer)
        if answer is None and raw:
            raise PartyClientError(f"the server answered {status} with a body that is not JSON")
        return answer

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        retry_key: str | None = None,
    ) -> tuple[int, bytes]:
        # One retry on a fresh connection when a kept-alive one turns out to be closed by the
        # server (idle timeout, restart). Most often the request never reached it; but a server
        # that dies after reading it looks the same, so a POST that may be retried carries a key
        # (``retry_key``) from its first try, and its retry is answered from that first try.
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            if reused and retry_key is not None and IDEMPOTENCY_HEADER not in headers:
                headers = {**headers, IDEMPOTENCY_HEADER: retry_key}
            try:
                try:
                    conn.request(method, path, body=body, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    # The server may have answered early (413, 401) and closed while we were
                    # still sending: its answer can still be read.
                    if not reused:
                        return self._read(conn)
                    raise
                return self._read(conn)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue
                raise PartyConnectionError(f"connection to {self.address} broke: {exc}") from exc
            except TimeoutError as exc:
                self.close()
                raise PartyConnectionError(
                    f"no answer from {self.address} within {self.timeout} s ({method} {path})"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise PartyConnectionError(
                    f"cannot reach the Party server at {self.address}: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _read(self, conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        response = conn.getresponse()
        raw = response.read()
        if response.will_close:
            self.close()
        return response.status, raw

    # -- the common calls --------------------------------------------------------------------

    def add(
        self,
        party: str,
        data: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict:
        """Add one task of handler ``party``; return it as stored. With ``idempotency_key``, a
        repeat within 24 h returns the same task and adds nothing."""
        item: dict[str, Any] = {"party": party}
        if data is not None:
            item["data"] = data
        if timestamp is not None:
            item["timestamp"] = timestamp
        return self.add_many([item], idempotency_key=idempotency_key)[0]

    def add_many(
        self, tasks: list[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[dict]:
        """Add a batch of ``{"party", "data", "timestamp"}`` items, all or nothing; with
        ``idempotency_key``, at most once within 24 h (a repeat gets the first answer)."""
        return self(
            "/tasks", None, data={"tasks": tasks}, method="POST", idempotency_key=idempotency_key
        )

    def get(self, task_id: str) -> dict:
        """The task with this id."""
        return self(f"/task/{quote(task_id, safe='')}")

    def run(self, task_id: str) -> dict:
        """Run the task now in the server's warm worker; return it after the run."""
        return self(f"/task/{quote(task_id, safe='')}", None, data={}, method="POST")

    def delete(self, task_id: str) -> dict:
        """Delete the task (idempotent); return it with status ``deleted``."""
        return self(f"/task/{quote(task_id, safe='')}", None, method="DELETE")

    def list(
        self,
        status: str | None = None,
        party: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict:
        """One page in queue order: ``{"tasks": [...], "next": cursor or None}``."""
        params = {"status": status, "party": party, "limit": limit, "after": after}
        return self("/tasks", params)

    def iter_tasks(
        self, status: str | None = None, party: str | None = None, page: int = 500
    ) -> Iterator[dict]:
        """Every matching task in queue order, page after page."""
        after = None
        while True:
            answer = self.list(status=status, party=party, limit=page, after=after)
            yield from answer["tasks"]
            after = answer["next"]
            if after is None:
                return

    def stats(self) -> dict:
        """Counts per status and party, due tasks and the oldest one's age in seconds."""
        return self("/stats")

    def health(self) -> dict:
        """``{"status": "ok"}`` when the server and its store answer."""
        return self("/health")
