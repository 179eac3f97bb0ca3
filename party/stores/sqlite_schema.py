"""What an SQLite store file is, and how one is opened: the options of its ``sqlite:///`` URL, its
creation (owner and group only), its tables, indexes and triggers, the columns of the task fields,
and the migration of a file made by an earlier Party (``SCHEMA_VERSION``, columns added for new
fields).

Owns the DDL and nothing that runs a task operation; ``sqlite_file`` calls ``is_prepared`` and
``migrate`` under the writers' lock. Imports only the standard library, ``model`` and ``errors``:
never ``stores.base``, the other SQLite modules, ``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

from ..errors import ConfigError, StoreUnavailable
from ..model import TASK_FIELDS, FieldSpec, Kind

#: Modes of PRAGMA synchronous a store URL may choose (``?synchronous=normal``).
SYNCHRONOUS = ("full", "normal")
#: The options of an ``sqlite:///`` URL and the values each accepts.
URL_OPTIONS = {"synchronous": SYNCHRONOUS}
#: Mode of the files of a store (the database, its -wal and -shm, the lock file), less the
#: umask: never readable by other users.
FILE_MODE = 0o660

SCHEMA_VERSION = 8

SCHEMA = """
{tasks_table}
-- Serves the due-task claim (status = 'queued', timestamp <= now) in queue order, and listings
-- filtered by status, without a sort. Ends with run_at so that the claim and next_run_at skip the
-- retries waiting for their delay at the head of the queue within the index, without reading
-- their rows (3.5 times faster past 10,000 of them; version 7).
CREATE INDEX IF NOT EXISTS tasks_order ON tasks (status, timestamp, attempts, created, id, run_at);
-- Queued retries waiting for their delay (run_at > timestamp; a task's run_at is its timestamp
-- otherwise): with the order index, the next time a queued task becomes due (the scheduler's
-- sleep target). Replaces tasks_run_at (version 6 and before), which held every queued task: a
-- page more in the log of every add, an entry more to delete in every claim.
DROP INDEX IF EXISTS tasks_run_at;
CREATE INDEX IF NOT EXISTS tasks_delayed ON tasks (run_at)
    WHERE status = 'queued' AND run_at > timestamp;
-- Expired leases are found through tasks_order (status = 'running'): running tasks are few, so
-- an index of their own would only cost an update on every claim and completion.
DROP INDEX IF EXISTS tasks_lease;
-- At most one live recurring task per (party, data). Only live recurring tasks hold a key, so the
-- index is partial: the other tasks' NULLs cost no entry on insert. It replaces tasks_singleton,
-- which indexed the NULLs too: dropping that one migrates files made before.
DROP INDEX IF EXISTS tasks_singleton;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_live_singleton ON tasks (singleton)
    WHERE singleton IS NOT NULL;
-- Retention (prune): the ended tasks by the time they ended. Partial, so queued and running
-- tasks cost no entry; a task gains one when it ends. Every UPDATE of a status evaluates the
-- WHERE for the old row and the new one: an IN list of three or more values is built as a
-- temporary b-tree each time, which cost the drain a sixth of its instructions (version 5), so
-- the WHERE names the two live statuses, which SQLite compares in place (version 6).
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (status, coalesce(completed_on, created))
    WHERE status NOT IN ('queued', 'running');
-- Counters that outlive the tasks they count: 'pruned' (tasks removed by retention).
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('pruned', 0);
-- Adds under an Idempotency-Key: the key (unique), the digest of the request, when, and the
-- answer kept for repeats; written in the transaction of the add's tasks.
CREATE TABLE IF NOT EXISTS idempotency (
    key     TEXT PRIMARY KEY,
    digest  TEXT NOT NULL,
    created INTEGER NOT NULL,
    answer  BLOB
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
-- Schedulers' heartbeats (beat, schedulers): one JSON record each, by scheduler id.
CREATE TABLE IF NOT EXISTS schedulers (
    id        TEXT PRIMARY KEY,
    heartbeat INTEGER NOT NULL,
    record    TEXT NOT NULL
);
-- One row that check_writable rewrites: the proof that the store takes a write.
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), checked INTEGER);
-- What stats() and the caps read instead of counting the table: the tasks of each party
-- (totals) and the ended tasks of each (party, status) (ended), kept by the triggers below.
-- Running tasks are counted in the order index (they are what the workers hold: few), and queued
-- ones are the rest. So only an add, an end and a delete write a count: a claim, a retry or a
-- hand-back moves a task between the live statuses and writes none (version 8; counting queued
-- and running too cost the drain four count writes per task, 7% of its instructions). The table
-- of version 7 and before, counts, is dropped: a Party of that version reads a missing table
-- instead of counts that no longer hold queued and running tasks.
CREATE TABLE IF NOT EXISTS totals (party TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ended (
    party  TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (party, status)
) WITHOUT ROWID;
DROP TRIGGER IF EXISTS counts_insert;
DROP TRIGGER IF EXISTS counts_delete;
DROP TRIGGER IF EXISTS counts_update;
DROP TABLE IF EXISTS counts;
DELETE FROM totals;
INSERT INTO totals (party, n) SELECT party, COUNT(*) FROM tasks GROUP BY 1;
DELETE FROM ended;
INSERT INTO ended (party, status, n) SELECT party, status, COUNT(*) FROM tasks
    WHERE status NOT IN ('queued', 'running') GROUP BY 1, 2;
-- An add inserts queued tasks: its one count is the total. A task inserted already ended (not
-- something Party's adds do) is counted by a trigger of its own, whose WHEN costs an add less
-- than a second statement in this one (2.3k against 4.6k instructions).
CREATE TRIGGER IF NOT EXISTS tally_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO totals (party, n) VALUES (NEW.party, 1)
        ON CONFLICT (party) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_insert_ended AFTER INSERT ON tasks
WHEN NEW.status NOT IN ('queued', 'running') BEGIN
    INSERT INTO ended (party, status, n) VALUES (NEW.party, NEW.status, 1)
        ON CONFLICT (party, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_delete AFTER DELETE ON tasks BEGIN
    UPDATE totals SET n = n - 1 WHERE party = OLD.party;
    UPDATE ended SET n = n - 1 WHERE party = OLD.party AND status = OLD.status;
END;
-- Fired by every claim and end: the WHEN fails fast for a move between the live statuses, and the
-- body is two statements (a party change moves its totals in tally_party, which the hot writes,
-- setting no party, never fire). Firing when nothing changed is harmless: -1 and +1 on one row.
CREATE TRIGGER IF NOT EXISTS tally_update AFTER UPDATE OF party, status ON tasks
WHEN NEW.status NOT IN ('queued', 'running') OR OLD.status NOT IN ('queued', 'running')
    OR OLD.party IS NOT NEW.party BEGIN
    UPDATE ended SET n = n - 1 WHERE party = OLD.party AND status = OLD.status;
    INSERT INTO ended (party, status, n) SELECT NEW.party, NEW.status, 1
        WHERE NEW.status NOT IN ('queued', 'running')
        ON CONFLICT (party, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_party AFTER UPDATE OF party ON tasks
WHEN OLD.party IS NOT NEW.party BEGIN
    UPDATE totals SET n = n - 1 WHERE party = OLD.party;
    INSERT INTO totals (party, n) VALUES (NEW.party, 1)
        ON CONFLICT (party) DO UPDATE SET n = n + 1;
END;
"""

# Column types of the field kinds: times are integer microseconds since the epoch (UTC), JSON is
# its text, a bool 0 or 1.
_COLUMN_TYPES = {
    Kind.ID: "TEXT", Kind.TEXT: "TEXT", Kind.STATUS: "TEXT", Kind.JSON: "TEXT",
    Kind.INT: "INTEGER", Kind.BOOL: "INTEGER", Kind.TIME: "INTEGER",
}  # fmt: skip


def _sql_literal(value: Any) -> str:
    """A field's default written into SQL: Party's own constants, never user input."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + str(value).replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a default of {value!r}")


def _column(spec: FieldSpec) -> str:
    """The definition of the column of ``spec`` (in CREATE TABLE and ADD COLUMN)."""
    sql = f"{spec.name} {_COLUMN_TYPES[spec.kind]}"
    if spec.kind == Kind.ID:
        return sql + " PRIMARY KEY"
    if not spec.nullable:
        sql += " NOT NULL"
    if not spec.required and spec.default is not None:
        sql += " DEFAULT " + _sql_literal(spec.default)
    return sql


SCHEMA = SCHEMA.replace(
    "{tasks_table}",
    "CREATE TABLE IF NOT EXISTS tasks (\n    "
    + ",\n    ".join(_column(spec) for spec in TASK_FIELDS)
    + "\n);",
)


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script``, split where SQLite says one is complete (a trigger's body
    holds semicolons of its own)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement
            statement = ""


def _create_private(path: str) -> None:
    """Create the database file, if missing, readable by its owner and group only.

    SQLite would create it 0644 less the umask, world-readable as a rule; it gives its ``-wal``
    and ``-shm`` files the mode of the database file, so creating that one is enough.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """The file path and the ``SqliteStore`` options of an ``sqlite:///`` URL.

    Raises ``ConfigError`` naming an unknown option, or a value that is not accepted.
    """
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if name not in URL_OPTIONS:
            raise ConfigError(
                f"store URL option {name!r} is not understood; accepted: "
                + ", ".join(f"{key}={'|'.join(accepted)}" for key, accepted in URL_OPTIONS.items())
            )
        value = values[-1].lower()
        if value not in URL_OPTIONS[name]:
            raise ConfigError(
                f"store URL option {name}={values[-1]!r} is not understood; accepted: "
                + ", ".join(f"{name}={accepted}" for accepted in URL_OPTIONS[name])
            )
        options[name] = value
    return path, options


def missing_columns(db: sqlite3.Connection) -> list[FieldSpec]:
    """The fields of ``TASK_FIELDS`` the file's tasks table has no column for (those declared
    after the file was made)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    return [spec for spec in TASK_FIELDS if spec.name not in present]


def is_prepared(db: sqlite3.Connection, path: str) -> bool:
    """Whether the file of ``path`` is in WAL mode with the schema of this Party."""
    if path != ":memory:" and db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        return False
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        return False
    return not missing_columns(db)


_CREATE_INDEX = re.compile(r"CREATE (UNIQUE )?INDEX IF NOT EXISTS (\w+) ")


def changed_indexes(db: sqlite3.Connection) -> list[str]:
    """The indexes of the file whose definition is not the schema's (made by an earlier Party):
    ``migrate`` drops them, and the script builds them again."""
    stored = dict(
        db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    )
    changed = []
    for statement in _statements(SCHEMA):
        found = _CREATE_INDEX.search(statement)
        if found is None or found.group(2) not in stored:
            continue
        # SQLite keeps the statement as written, less "IF NOT EXISTS".
        wanted = f"CREATE {found.group(1) or ''}INDEX {found.group(2)} "
        wanted += statement[found.end() :].strip().rstrip(";")
        if " ".join(wanted.split()) != " ".join(stored[found.group(2)].split()):
            changed.append(found.group(2))
    return changed


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create or migrate the schema, inside the caller's write transaction: the script of an older
    version (indexes whose definition changed are dropped first and built again), then a column
    for each field declared since the file was made (a new field only needs its line in
    ``model.Task``; its stored tasks read its default)."""
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        for name in changed_indexes(db):
            db.execute(f'DROP INDEX "{name}"')
        for statement in _statements(SCHEMA):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    for spec in missing_columns(db):
        if spec.required or (not spec.nullable and spec.default is None):
            raise StoreUnavailable(
                f"cannot migrate SQLite store {path!r}: the new task field {spec.name!r} "
                "has no default for the tasks already stored (give it one in party/model.py)"
            )
        db.execute(f"ALTER TABLE tasks ADD COLUMN {_column(spec)}")
