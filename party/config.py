"""Settings: flags, else ``PARTY_*`` environment variables, else defaults, with clear errors.

The only module that reads ``os.environ``. Entry points build an argparse parser with
``add_arguments`` and turn its namespace into ``Settings`` with ``load``. Standard library only.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Every setting of the server and the scheduler (see the README's table)."""

    store: str = "sqlite:///party.db"
    tasks: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8032
    socket: str | None = None
    token: str | None = None
    workers: int = os.cpu_count() or 1
    concurrency: int = 1
    poll_interval: float = 1.0
    grace: float = 30.0
    log_level: str = "INFO"
    max_body: int = 8 * 1024 * 1024
    max_batch: int = 5000
    lease: float = 60.0
    insecure: bool = False


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _sources(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _optional(text: str) -> str | None:
    return text or None


# name → (parse, what is accepted, help)
_SPEC: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "store": (
        str,
        "a store URL",
        "sqlite:///party.db, sqlite:////abs/path.db or mongodb://host:port/db",
    ),
    "tasks": (
        _sources,
        "comma-separated sources",
        "extra handler modules, .py files or directories",
    ),
    "host": (str, "a host name or address", "TCP address of the server"),
    "port": (_port, "a port number 0..65535", "TCP port of the server"),
    "socket": (_optional, "a file path", "listen on this Unix socket instead of TCP (mode 0660)"),
    "token": (_optional, "a string", "require 'Authorization: Bearer <token>' on every request"),
    "workers": (_positive_int, "an integer >= 1", "worker processes of the scheduler"),
    "concurrency": (
        _positive_int,
        "an integer >= 1",
        "runs at once in each worker: async handlers on its event loop, others in threads",
    ),
    "poll_interval": (
        _positive_float,
        "seconds > 0",
        "longest idle sleep between looks at the store",
    ),
    "grace": (float, "seconds >= 0", "how long a stopping scheduler lets running tasks finish"),
    "log_level": (_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL", "logging level"),
    "max_body": (_positive_int, "bytes >= 1", "largest request body the server reads"),
    "max_batch": (_positive_int, "an integer >= 1", "most tasks in one POST /tasks"),
    "lease": (_positive_float, "seconds > 0", "how long a claimed task stays reserved"),
    "insecure": (_flag, "1 or 0", "allow a non-loopback address without a token"),
}


def env_name(name: str) -> str:
    """The environment variable of a setting: ``poll_interval`` → ``PARTY_POLL_INTERVAL``."""
    return "PARTY_" + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of a setting: ``poll_interval`` → ``--poll-interval``."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the flags of the named settings; each defaults to None so ``load`` can see it unset."""
    defaults = Settings()
    for name in names:
        parse, accepted, help_text = _SPEC[name]
        default = getattr(defaults, name)
        if name == "insecure":
            parser.add_argument(flag_name(name), action="store_true", default=None, help=help_text)
            continue
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{help_text} (env {env_name(name)}; default {shown})",
        )


def load(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from flag values (None = not given), the environment and the defaults.

    Raises ``ConfigError`` naming the flag or variable, the bad value and what is accepted.
    """
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        parse, accepted, _ = _SPEC[f.name]
        raw = given.get(f.name)
        source = flag_name(f.name)
        if raw is None and env_name(f.name) in environ:
            raw, source = environ[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        if isinstance(raw, str):
            try:
                raw = parse(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"{source}={raw!r} is not valid ({exc}); expected {accepted}"
                ) from None
        values[f.name] = raw
    settings = Settings(**values)
    if settings.grace < 0:
        raise ConfigError(f"grace must be >= 0 seconds, got {settings.grace}")
    if logging.getLevelName(settings.log_level) == f"Level {settings.log_level}":
        raise ConfigError(f"unknown log level {settings.log_level!r}")
    return settings


def to_environ(settings: Settings) -> dict[str, str]:
    """Every setting as the ``PARTY_*`` variable that ``load`` reads back to the same value (a
    setting that is None is left out): how ``party up`` hands its settings to its children
    without putting a token on a command line."""
    environ: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        environ[env_name(f.name)] = text
    return environ
