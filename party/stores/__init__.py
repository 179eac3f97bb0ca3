"""Stores: ``open_store(url)`` picks the backend from the URL scheme.

``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` opens the embedded store (with
options after ``?``: ``synchronous=full`` by default, or ``normal``);
``mongodb://host:port/dbname`` (or ``mongodb+srv://``) the production one. A backend's module (for
Mongo, pymongo with it) is imported only when its URL is opened, or ahead of time by
``load_backend(url)``.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Store

__all__ = ["Store", "open_store", "load_backend", "describe_store_url"]

ACCEPTED = "sqlite:///relative.db, sqlite:////absolute/path.db or mongodb://host:port/dbname"


def describe_store_url(url: str) -> str:
    """Check ``url`` without opening it; return the backend name or raise ConfigError."""
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///") :].partition("?")[0]:
            raise ConfigError(f"store URL {url!r} names no file; expected {ACCEPTED}")
        from .sqlite import parse_url

        parse_url(url)  # raises ConfigError for an option it does not know
        return "sqlite"
    if url.startswith(("mongodb://", "mongodb+srv://")):
        rest = url.split("://", 1)[1]
        path = rest.split("/", 1)[1] if "/" in rest else ""
        if not path.split("?", 1)[0]:
            raise ConfigError(f"store URL {url!r} names no database; expected {ACCEPTED}")
        return "mongodb"
    raise ConfigError(f"store URL {url!r} is not understood; expected {ACCEPTED}")


def load_backend(url: str) -> type[Store]:
    """Import the backend of ``url`` and return its Store class, without opening anything.

    A process that forks workers calls it before the fork, so each child inherits the imported
    module instead of importing it before its first task (for SQLite about 3 ms, or 10 ms from
    uncompiled sources). Raises ConfigError as ``describe_store_url`` does.
    """
    if describe_store_url(url) == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore
    from .mongo import MongoStore

    return MongoStore


def open_store(url: str) -> Store:
    """Open the store named by ``url`` (see the module docstring for the accepted forms)."""
    return load_backend(url).from_url(url)
