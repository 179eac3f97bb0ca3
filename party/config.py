"""Settings: flags, else ``PARTY_*`` environment variables, else defaults, with clear errors.

The only module that reads ``os.environ``. Entry points build an argparse parser with
``add_arguments`` and turn its namespace into ``Settings`` with ``load``. Standard library only.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
    #: Seconds completed and deleted tasks are kept (0: for ever), then pruned by the scheduler.
    keep_completed: float = 7 * 86400.0
    #: Seconds failed tasks are kept (0: for ever).
    keep_failed: float = 30 * 86400.0


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


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds of a duration: a number with an optional unit, ``90s``, ``15m``, ``12h``, ``7d``,
    ``2w`` (bare numbers are seconds; ``0`` and ``0s`` mean for ever where a setting says so)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None:
        raise ValueError("must be a number with an optional unit s, m, h, d or w, as 7d or 12h")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value == float("inf"):
        raise ValueError("must be finite")
    return value


def format_duration(seconds: float) -> str:
    """A duration in its largest whole unit (``604800.0`` → ``7d``); ``0`` stays ``0``."""
    for unit in "dhm":
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds else "0"


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
    "keep_completed": (
        parse_duration,
        "a duration such as 7d, 12h, 90m or 3600 (seconds); 0 keeps them for ever",
        "how long completed and deleted tasks are kept before the scheduler prunes them",
    ),
    "keep_failed": (
        parse_duration,
        "a duration such as 30d, 12h or 3600 (seconds); 0 keeps them for ever",
        "how long failed tasks are kept before the scheduler prunes them",
    ),
}


def env_name(name: str) -> str:
    """The environment variable of a setting: ``poll_interval`` → ``PARTY_POLL_INTERVAL``."""
    return "PARTY_" + name.upper()


def environ_of(names: Iterable[str]) -> dict[str, str]:
    """The ``PARTY_*`` variables of the settings ``names`` alone, for a ``load`` that reads no
    other: a bad value of a setting another process uses must not stop this one."""
    wanted = {env_name(name) for name in names}
    return {key: value for key, value in os.environ.items() if key in wanted}


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
        if _SPEC[name][0] is parse_duration:
            shown = format_duration(default)
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
