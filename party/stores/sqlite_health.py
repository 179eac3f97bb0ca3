"""What is wrong with an SQLite store file, in words an operator can act on: the checks behind
``SqliteFile.check_writable`` (the file still an SQLite database and still the one open, room on
its file system, the meaning of an SQLite error code) and the findings of ``describe``
(``party check``).

Pure functions of a path and of what the connection read: nothing here holds a connection or a
lock (``sqlite_file`` does). Imports only the standard library, ``errors``, ``stores.base`` and
``sqlite_schema``.
"""

from __future__ import annotations

import os
import sqlite3

from ..errors import StoreUnavailable
from .base import Finding
from .sqlite_schema import SCHEMA_VERSION


def open_to_watch(path: str) -> int | None:
    """A read-only descriptor of the database file, for ``unlinked``; None when it cannot be
    opened (SQLite then says what is wrong with the file)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def unlinked(fd: int | None) -> bool:
    """Whether the file open as ``fd`` lost its name: deleted, or replaced by another file at its
    path (a write would go into a file nobody will read)."""
    return fd is not None and not os.fstat(fd).st_nlink


#: Free bytes below which the file system of the store counts as full.
MIN_FREE_BYTES = 1 << 20

_HEADER = b"SQLite format 3\x00"

# What an SQLite error code means for a person, by its name's prefix (most specific first).
_UNWRITABLE_REASONS = (
    ("SQLITE_READONLY", "the store is read-only (a read-only file system or file)"),
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_CORRUPT", "the database file is corrupt"),
    ("SQLITE_NOTADB", "the file is not an SQLite database (corrupt?)"),
    ("SQLITE_BUSY", "the write lock was not had within a second"),
    ("SQLITE_LOCKED", "the write lock was not had within a second"),
    ("SQLITE_IOERR", "an I/O error (the disk failed, is full or went read-only)"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_PERM", "permission denied"),
)

_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}


def unwritable_reason(exc: sqlite3.Error) -> str:
    """Why SQLite refused a write, in words (by the error code's name)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, reason in _UNWRITABLE_REASONS:
        if name.startswith(prefix):
            return reason
    return "SQLite refused the write"


def check_file(path: str, where: str) -> None:
    """Raise ``StoreUnavailable`` (its message starting with ``where``) unless the file of
    ``path`` still starts with SQLite's header and its file system has ``MIN_FREE_BYTES`` free.

    A connection works from pages it has cached and from the log, so it may not notice a file
    overwritten under it; the header is the cheap check (a full ``quick_check`` reads every
    page, far too slow for a health probe).
    """
    if path == ":memory:":
        return
    try:
        with open(path, "rb") as file:
            header = file.read(len(_HEADER))
    except OSError as exc:
        raise StoreUnavailable(f"{where}: {exc}") from exc
    if header and header != _HEADER:
        raise StoreUnavailable(f"{where}: the database file is corrupt (no SQLite header)")
    try:
        fs = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise StoreUnavailable(f"{where}: {exc}") from exc
    if not fs.f_blocks:  # a file system that reports no sizes (some FUSE, network ones)
        return
    # root may fill the blocks reserved for it; others stop at f_bavail.
    free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise StoreUnavailable(f"{where}: the disk is full ({free} bytes free)")


def findings(
    path: str, journal: str, synchronous: int, version: int, missing_columns: bool
) -> list[Finding]:
    """The file, its journal mode, synchronous setting (2 for a store that syncs its log itself),
    schema version and size, each with the problem or warning it shows."""
    memory = path == ":memory:"
    found = [
        Finding("file", path if memory else os.path.abspath(path)),
        Finding(
            "journal mode",
            journal,
            problem=None
            if journal == "wal" or memory
            else "the store is not in WAL mode: open it once with Party (it switches it)",
        ),
        Finding(
            "synchronous",
            _SYNCHRONOUS.get(synchronous, str(synchronous)),
            warning=None
            if synchronous >= 2
            else "a power cut may lose the last acknowledged adds (?synchronous=normal)",
        ),
        Finding(
            "schema version",
            f"{version} (this Party: {SCHEMA_VERSION})",
            problem=None
            if version >= SCHEMA_VERSION and not missing_columns
            else "open the store once with this version of Party: it migrates the file",
        ),
    ]
    if not memory:
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        found.append(Finding("size", f"{size / 1e6:.1f} MB (with its log)"))
    return found
