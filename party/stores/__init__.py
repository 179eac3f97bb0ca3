"""Stores: ``open_store(url)`` picks the backend from the URL scheme.

``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` opens the embedded store;
``mongodb://host:port/dbname`` (or ``mongodb+srv://``) the production one. The Mongo module, and so
pymongo, is imported only when a Mongo URL is opened.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Store

__all__ = ["Store", "open_store", "describe_store_url"]

ACCEPTED = "sqlite:///relative.db, sqlite:////absolute/path.db or mongodb://host:port/dbname"


def describe_store_url(url: str) -> str:
    """Check ``url`` without opening it; return the backend name or raise ConfigError."""
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///") :]:
            raise ConfigError(f"store URL {url!r} names no file; expected {ACCEPTED}")
        return "sqlite"
    if url.startswith(("mongodb://", "mongodb+srv://")):
        rest = url.split("://", 1)[1]
        path = rest.split("/", 1)[1] if "/" in rest else ""
        if not path.split("?", 1)[0]:
            raise ConfigError(f"store URL {url!r} names no database; expected {ACCEPTED}")
        return "mongodb"
    raise ConfigError(f"store URL {url!r} is not understood; expected {ACCEPTED}")


def open_store(url: str) -> Store:
    """Open the store named by ``url`` (see the module docstring for the accepted forms)."""
    kind = describe_store_url(url)
    if kind == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :])
    from .mongo import MongoStore

    return MongoStore.from_url(url)
