"""The ``party`` command line: run the server (``serve``, ``up``) and talk to a running one.

``serve`` and ``up`` import the server (tornado) lazily, so the client commands (``add``, ``show``,
``run``, ``delete``, ``list``, ``stats``, ``health``) stay as light as ``party.client``, which they
use. Client commands reach the server through ``--socket`` or ``--host``/``--port`` and
``--token`` (or ``PARTY_SOCKET``, ``PARTY_HOST``, ``PARTY_PORT``, ``PARTY_TOKEN``), print tables
for people or ``--json`` for scripts, and exit 1 with the server's message when it refuses. ``up``
supervises a server and a scheduler as two child processes (``party.up``). An entry point: it
configures logging. Imports ``config``, ``log``, ``errors``, ``client`` and (lazily)
``server.listen`` and ``up``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from . import config
from .client import BlockingHTTPClient, PartyClientError, PartyHTTPError
from .errors import ConfigError, PartyError

SERVER_SETTINGS = (
    "store", "tasks", "host", "port", "socket", "token", "insecure",
    "max_body", "max_batch", "lease", "grace", "log_level",
)  # fmt: skip
CLIENT_SETTINGS = ("socket", "host", "port", "token")
#: ``up`` takes every setting of the server and of the scheduler and passes each on.
UP_SETTINGS = SERVER_SETTINGS + ("workers", "concurrency", "poll_interval")
UP_SETTINGS += ("keep_completed", "keep_failed")  # the scheduler's retention
LIST_COLUMNS = ("_id", "party", "status", "attempts", "timestamp", "data")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``party`` and ``python -m party``."""
    parser = argparse.ArgumentParser(
        prog="party", description="Party job queue: run the server, or talk to a running one."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    config.add_arguments(serve, SERVER_SETTINGS)
    up = commands.add_parser(
        "up", help="run the server and the scheduler together (Ctrl-C stops both)"
    )
    config.add_arguments(up, UP_SETTINGS)

    client = argparse.ArgumentParser(add_help=False)
    config.add_arguments(client, CLIENT_SETTINGS)
    client.add_argument("--json", action="store_true", help="print the server's JSON answer")
    client.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for an answer (default 300)"
    )

    add = commands.add_parser("add", parents=[client], help="add a task")
    add.add_argument("handler", help="handler name (its class name)")
    add.add_argument("--data", default=None, help="the task's data as a JSON object")
    add.add_argument(
        "--at",
        default=None,
        metavar="WHEN",
        help="when to run: ISO 8601 (UTC unless it has an offset), epoch seconds, or +N[smhd] "
        "from now (default: now)",
    )
    add.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="send this Idempotency-Key: repeating the same command within 24 h adds nothing "
        "and prints the task of the first (1 to 255 visible ASCII characters, e.g. a UUID)",
    )
    for name, text in (
        ("show", "show one task"),
        ("run", "run a task now in the server's worker and show it afterwards"),
        ("delete", "delete a task"),
    ):
        sub = commands.add_parser(name, parents=[client], help=text)
        sub.add_argument("id", help="the task's 24-hex id")
    lister = commands.add_parser("list", parents=[client], help="list tasks in queue order")
    lister.add_argument("--status", help="queued, running, completed, failed or deleted")
    lister.add_argument("--party", help="only tasks of this handler")
    lister.add_argument("--limit", type=int, default=50, help="tasks per page (1..1000)")
    lister.add_argument("--after", help="the cursor printed after a full page")
    commands.add_parser("stats", parents=[client], help="counts per status and handler")
    commands.add_parser(
        "schedulers", parents=[client], help="the live schedulers and what their workers run"
    )
    commands.add_parser(
        "schedules", parents=[client], help="the declared schedules, their next slot and task"
    )
    commands.add_parser("health", parents=[client], help="check that the server and store answer")
    check = commands.add_parser(
        "check", help="check the configured store before going live (no server needed)"
    )
    from .check import add_arguments

    add_arguments(check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``party`` command line; return the exit status (0 ok, 1 refused, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("serve", "up"):
            return _run_server(args)
        if args.command == "check":
            from .check import run

            return run(args)
        return _run_client(args)
    except ConfigError as exc:
        print(f"party: {exc}", file=sys.stderr)
        return 2
    except PartyHTTPError as exc:
        print(f"party: error {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except (PartyClientError, PartyError) as exc:
        print(f"party: {exc}", file=sys.stderr)
        return 1


# -- the server -------------------------------------------------------------------------------


def _run_server(args: argparse.Namespace) -> int:
    from .log import setup_logging

    settings = config.load(args)
    setup_logging(settings.log_level)
    if args.command == "serve":
        from .server.listen import serve

        return serve(settings)
    from .up import run

    return run(settings)


# -- the client commands ----------------------------------------------------------------------


def _client(args: argparse.Namespace) -> BlockingHTTPClient:
    settings = config.load(
        {name: getattr(args, name, None) for name in CLIENT_SETTINGS},
        environ=config.environ_of(CLIENT_SETTINGS),  # a bad server-only variable: not our concern
    )
    address = settings.socket or f"{settings.host}:{settings.port}"
    return BlockingHTTPClient(address, token=settings.token, timeout=args.timeout)


def _run_client(args: argparse.Namespace) -> int:
    with _client(args) as con:
        if args.command == "add":
            item: dict[str, Any] = {"party": args.handler, "data": _parse_data(args.data)}
            if args.at is not None:
                item["timestamp"] = parse_when(args.at)
            answer = con.request(
                "/tasks",
                None,
                data={"tasks": [item]},
                method="POST",
                idempotency_key=args.idempotency_key,
            )
            _print(args, answer, lambda: _print_task(answer[0]))
        elif args.command in ("show", "run", "delete"):
            path = f"/task/{args.id}"
            method = {"show": "GET", "run": "POST", "delete": "DELETE"}[args.command]
            data = {} if method == "POST" else None
            answer = con.request(path, None, data=data, method=method)
            _print(args, answer, lambda: _print_task(answer))
        elif args.command == "list":
            params = {"status": args.status, "party": args.party, "limit": args.limit,
                      "after": args.after}  # fmt: skip
            answer = con.request("/tasks", params)
            _print(args, answer, lambda: _print_page(answer))
        elif args.command == "stats":
            answer = con.request("/stats")
            _print(args, answer, lambda: _print_stats(answer))
        elif args.command == "schedulers":
            answer = con.request("/schedulers")
            _print(args, answer, lambda: _print_schedulers(answer["schedulers"]))
        elif args.command == "schedules":
            answer = con.request("/schedules")
            _print(args, answer, lambda: _print_schedules(answer["schedules"]))
        else:
            answer = con.request("/health")
            _print(args, answer, lambda: print(answer.get("status", answer)))
    return 0


def _parse_data(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"--data is not valid JSON ({exc}); e.g. --data '{{\"arg1\": 1}}'"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--data must be a JSON object, e.g. '{{\"arg1\": 1}}', got {text!r}")
    return data


_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")


def parse_when(text: str) -> Any:
    """``--at``: ``+N[smhd]`` from now becomes an ISO string; epoch seconds a number; anything
    else is sent as is for the server to parse (ISO 8601, naive meaning UTC)."""
    match = _RELATIVE.match(text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        when = datetime.now(UTC) + timedelta(**{unit: float(match[1])})
        return when.isoformat()
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def _print(args: argparse.Namespace, answer: Any, human: Any) -> None:
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        human()


def _print_task(task: dict[str, Any]) -> None:
    width = max(len(k) for k in task)
    for key, value in task.items():
        if key == "waiting" and isinstance(value, dict):
            until = f" (until {value['until']})" if value.get("until") else ""
            print(f"{key:<{width}}  {value.get('reason')}{until}: {value.get('detail')}")
            continue
        if key == "last_error" and isinstance(value, dict):
            print(f"{key:<{width}}  {value.get('type')}: {value.get('message')}")
            if value.get("traceback"):
                for line in str(value["traceback"]).rstrip().splitlines():
                    print(f"{'':<{width}}    {line}")
            continue
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        print(f"{key:<{width}}  {'-' if shown is None else shown}")


def _print_page(page: dict[str, Any]) -> None:
    rows = [[_cell(task.get(c)) for c in LIST_COLUMNS] for task in page["tasks"]]
    _table([c.lstrip("_").upper() for c in LIST_COLUMNS], rows)
    if page.get("next"):
        print(f"(more: --after {page['next']})")


def _print_stats(stats: dict[str, Any]) -> None:
    statuses = list(stats["statuses"])
    _table(["", *map(str.upper, statuses)], [["ALL", *map(str, stats["statuses"].values())]]
           + [[name, *(str(counts.get(s, 0)) for s in statuses)]
              for name, counts in sorted(stats["parties"].items())])  # fmt: skip
    oldest = stats.get("oldest_due_seconds")
    print(f"\ndue now: {stats['due']}" + (f" (oldest waiting {oldest:.1f} s)" if oldest else ""))
    if stats.get("no_handler"):
        print(f"queued for a handler no live scheduler has: {stats['no_handler']}")


def _print_schedulers(schedulers: list[dict[str, Any]]) -> None:
    _table(["ID", "HOST", "PID", "STARTED", "HEARTBEAT", "WORKERS", "HANDLERS"],
           [[s["id"], str(s["host"]), str(s["pid"]), str(s["started"]), str(s["heartbeat"]),
             f"{len(s['running'])}/{s['workers']} busy", _cell(", ".join(s["handlers"]))]
            for s in schedulers])  # fmt: skip
    running = [(s, run) for s in schedulers for run in s["running"]]
    if running:
        print()
        _table(["SCHEDULER", "WORKER", "PID", "TASK", "HANDLER", "SINCE"],
               [[s["id"], str(run.get("worker", "-")), str(run.get("pid", "-")), run["_id"],
                 run["party"], run["since"]] for s, run in running])  # fmt: skip


def _print_schedules(schedules: list[dict[str, Any]]) -> None:
    rows = []
    for s in schedules:
        when = s["schedule"] if s.get("schedule") else f"every {s.get('every'):g}s"
        zone = s.get("timezone") or "UTC"
        task = s.get("task") or {}
        rows.append([s["party"], _cell(when), zone, str(s.get("next")), task.get("_id") or "-"])
    _table(["PARTY", "SCHEDULE", "TIMEZONE", "NEXT", "TASK"], rows)


def _cell(value: Any, width: int = 40) -> str:
    text = "-" if value is None else (json.dumps(value) if isinstance(value, dict) else str(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")
