"""SqliteStore: the embedded, zero set-up store on one SQLite file, safe for several processes.

WAL lets readers run beside the one writer; a busy timeout makes writers queue instead of failing;
every claim is one ``UPDATE ... WHERE id IN (SELECT ... ORDER BY ... LIMIT n) RETURNING`` statement,
so it is atomic across processes, and the fenced writes of a batch that set the same fields (the
completions of a worker's runs) are one ``UPDATE ... FROM (VALUES ...) RETURNING``. Times are
stored as integer microseconds since the epoch (UTC).
The task operations live here; the file (opening, locking, checkpoints, health) in
``sqlite_file``, the schema and its migration in ``sqlite_schema``, the SQL and the row codecs
in ``sqlite_statements``. Imports only the standard library, ``model``, ``timestamps``,
``stores.base`` and those modules: never ``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..model import Status, Task, Write
from ..timestamps import from_micros, to_micros
from .base import (
    PRUNABLE,
    KeyedAdd,
    KeyRecord,
    KeyTaken,
    OrderKey,
    assemble_stats,
    check_batch_singletons,
    singleton_conflict,
)
from .sqlite_file import SqliteFile
from .sqlite_schema import parse_url
from .sqlite_statements import (
    _DELAYED,
    _DUE_CAPPED,
    _OLDEST_DUE,
    _PRUNE,
    _PRUNE_KEYS,
    _TALLIES,
    _WAITING_CAPPED,
    INSERT,
    INSERT_FRESH,
    NEXT_DELAYED,
    NEXT_UNDELAYED,
    ORDER,
    RETURNING,
    SELECT,
    STATS_COUNT_CAP,
    _apply,
    _batch_update_statement,
    _Micros,
    _row_to_task,
    _task_to_row,
    _update_sql,
    _write_statements,
    tally,
)

# Imported from here by ``stores.open_store``, tests and benchmarks: where they were defined
# before the schema, the statements and the file had modules of their own.
__all__ = [
    "INSERT",
    "NEXT_DELAYED",
    "NEXT_UNDELAYED",
    "SqliteStore",
    "_PRUNE",
    "_batch_update_statement",
    "parse_url",
]


class SqliteStore(SqliteFile):
    """Tasks in one SQLite file (``path``), shared safely by any number of processes.

    One connection per instance, guarded by a lock so a server may call it from a thread pool. Open
    a new instance in each process after a fork.
    """

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Open ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``, with options in a
        query string (``?synchronous=normal``); ``ConfigError`` names an unknown option."""
        path, options = parse_url(url)
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def insert_many(self, tasks: Sequence[Task], key: KeyedAdd | None = None) -> list[Task]:
        check_batch_singletons(tasks)
        micros = _Micros()
        fresh: list[tuple[Any, ...]] = []
        other: list[tuple[Any, ...]] = []
        for task in tasks:
            is_fresh, row = _task_to_row(task, micros)
            (fresh if is_fresh else other).append(row)
        with self._guard(write=True, sync=False) as db:
            try:
                if key is not None:
                    # The key's record and the tasks commit together: a repeat finds both or
                    # neither, and of two adds racing with one key the unique key lets one in.
                    with self._transaction():
                        self._hold_key(db, key)
                        if fresh:
                            db.executemany(INSERT_FRESH, fresh)
                        if other:
                            db.executemany(INSERT, other)
                        db.execute(
                            "UPDATE idempotency SET answer = ? WHERE key = ?",
                            (key.answer(list(tasks)), key.key),
                        )
                elif len(tasks) == 1:
                    # One row is one statement, which in autocommit mode is its own transaction:
                    # it takes the write lock as it starts (as BEGIN IMMEDIATE does) and commits
                    # as it ends, without the round trips of two more statements.
                    db.execute(INSERT_FRESH if fresh else INSERT, (fresh or other)[0])
                else:
                    with self._transaction():
                        if fresh:
                            db.executemany(INSERT_FRESH, fresh)
                        if other:
                            db.executemany(INSERT, other)
            except sqlite3.IntegrityError:
                clash = self._first_singleton_clash(tasks)
                if clash is None:
                    raise
                raise singleton_conflict(tasks[clash], clash) from None
        # The caller hears back only once the log is synced (a durable store), as with SQLite's
        # FULL; the workers may be woken first, and start the tasks during the sync.
        self._notify_and_sync()
        return list(tasks)

    def _hold_key(self, db: sqlite3.Connection, key: KeyedAdd) -> None:
        """Create the record of ``key`` in the open transaction (an expired one is replaced), or
        raise ``KeyTaken`` with the live record found."""
        db.execute(
            "DELETE FROM idempotency WHERE key = ? AND created < ?",
            (key.key, to_micros(key.expired_before)),
        )
        try:
            db.execute(
                "INSERT INTO idempotency (key, digest, created) VALUES (?, ?, ?)",
                (key.key, key.digest, to_micros(key.created)),
            )
        except sqlite3.IntegrityError:
            record = self._key_record(db, key.key)
            if record is None:  # pragma: no cover - the write lock is held: it cannot vanish
                raise
            raise KeyTaken(record) from None

    def key_record(self, key: str) -> KeyRecord | None:
        with self._guard() as db:
            return self._key_record(db, key)

    @staticmethod
    def _key_record(db: sqlite3.Connection, key: str) -> KeyRecord | None:
        row = db.execute(
            "SELECT digest, created, answer FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return KeyRecord(row[0], from_micros(row[1]), None if row[2] is None else bytes(row[2]))

    def prune(self, statuses: Sequence[Status], before: datetime, limit: int) -> int:
        chosen = [str(status) for status in statuses if status in PRUNABLE]
        if not chosen or limit <= 0:
            return 0
        sql = _PRUNE.format(statuses=", ".join(f"'{status}'" for status in chosen))
        with self._guard(write=True) as db, self._transaction():
            removed = db.execute(sql, (to_micros(before), limit)).rowcount
            if removed:
                db.execute("UPDATE meta SET value = value + ? WHERE name = 'pruned'", (removed,))
        return int(removed)

    def prune_keys(self, before: datetime, limit: int) -> int:
        with self._guard(write=True) as db:
            return int(db.execute(_PRUNE_KEYS, (to_micros(before), limit)).rowcount)

    def _first_singleton_clash(self, tasks: Sequence[Task]) -> int | None:
        for index, task in enumerate(tasks):
            if task.singleton is not None:
                row = self._db.execute(
                    "SELECT 1 FROM tasks WHERE singleton = ?", (task.singleton,)
                ).fetchone()
                if row is not None:
                    return index
        return None

    def get(self, task_id: str) -> Task | None:
        with self._guard() as db:
            row = db.execute(SELECT + " WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _row_to_task(row)

    def query(
        self,
        *,
        status: Status | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(str(status))
        if party is not None:
            clauses.append("party = ?")
            params.append(party)
        if after is not None:
            ts, attempts, created, id_ = after
            clauses.append("(timestamp, attempts, created, id) > (?, ?, ?, ?)")
            params.extend([to_micros(ts), attempts, to_micros(created), id_])
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._guard() as db:
            rows = db.execute(SELECT + where + ORDER + " LIMIT ?", (*params, limit)).fetchall()
        return [_row_to_task(row) for row in rows]

    def claim(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int] | None = None,
    ) -> list[Task]:
        if limits:
            return self._claim_limited(limit, now, lease_expires, token, limits)
        # By rowid, not id: the id would be looked up again in its own index for every row.
        now_us = to_micros(now)
        sql = (
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
            "lease_expires = ? WHERE rowid IN (SELECT rowid FROM tasks WHERE status = 'queued' "
            "AND timestamp <= ? AND run_at <= ?" + ORDER + " LIMIT ?)" + RETURNING
        )
        with self._guard(write=True) as db:
            rows = db.execute(
                sql, (token, to_micros(lease_expires), now_us, now_us, limit)
            ).fetchall()
        tasks = [_row_to_task(row) for row in rows]
        tasks.sort(key=lambda t: t.order_key)  # RETURNING gives no order guarantee
        return tasks

    def _claim_limited(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int],
    ) -> list[Task]:
        """``claim`` with caps: in one write transaction (so no other claim runs in between),
        count the running tasks of each capped party (in the order index: they are few),
        then walk the due tasks in queue order, leaving out the parties at their cap (in the
        query itself, so that a long run of their tasks at the head costs no round trips),
        and take what fits."""
        now_us = to_micros(now)
        parties = list(limits)
        marks = ", ".join("?" * len(parties))
        chosen: list[int] = []
        with self._guard(write=True) as db, self._transaction():
            running = dict(
                db.execute(
                    "SELECT party, COUNT(*) FROM tasks WHERE status = 'running' "
                    f"AND party IN ({marks}) GROUP BY party",
                    parties,
                ).fetchall()
            )
            room = {party: cap - running.get(party, 0) for party, cap in limits.items()}
            after: tuple[Any, ...] | None = None
            while len(chosen) < limit:
                full = [party for party, left in room.items() if left <= 0]
                sql = (
                    "SELECT rowid, party, timestamp, attempts, created, id FROM tasks "
                    "WHERE status = 'queued' AND timestamp <= ? AND run_at <= ?"
                )
                params: list[Any] = [now_us, now_us]
                if full:
                    sql += f" AND party NOT IN ({', '.join('?' * len(full))})"
                    params += full
                if after is not None:
                    sql += " AND (timestamp, attempts, created, id) > (?, ?, ?, ?)"
                    params += after
                want = limit - len(chosen)
                rows = db.execute(sql + ORDER + " LIMIT ?", (*params, want)).fetchall()
                for rowid, party, *_key in rows:
                    left = room.get(party)
                    if left is not None:
                        if left <= 0:
                            continue
                        room[party] = left - 1
                    chosen.append(rowid)
                if len(rows) < want:
                    break
                after = tuple(rows[-1][2:])
            if not chosen:
                return []
            rows = db.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
                f"lease_expires = ? WHERE rowid IN ({', '.join('?' * len(chosen))})" + RETURNING,
                (token, to_micros(lease_expires), *chosen),
            ).fetchall()
        tasks = [_row_to_task(row) for row in rows]
        tasks.sort(key=lambda t: t.order_key)
        return tasks

    def claim_id(self, task_id: str, lease_expires: datetime, token: str) -> Task | None:
        sql = (
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease = ?, "
            "lease_expires = ? WHERE id = ? AND status = 'queued'" + RETURNING
        )
        with self._guard(write=True) as db:
            row = db.execute(sql, (token, to_micros(lease_expires), task_id)).fetchone()
        return None if row is None else _row_to_task(row)

    def update(self, write: Write) -> Task | None:
        sql, params = _update_sql(write)
        with self._guard(write=True) as db:
            row = db.execute(sql + RETURNING, params).fetchone()
        if row is None:
            return None
        if write.fields.get("status") == Status.QUEUED:
            self.notify()
        return _row_to_task(row)

    def write_many(self, writes: Sequence[Write]) -> list[bool]:
        if not writes:
            return []
        statements = _write_statements(writes, self._max_params)
        matched = [False] * len(writes)
        with self._guard(write=True) as db:
            if len(statements) == 1:
                # One statement is its own transaction in autocommit mode: it takes the write lock
                # as it starts (as BEGIN IMMEDIATE does) and commits as it ends.
                _apply(db, statements[0], writes, matched)
            else:
                with self._transaction():
                    for statement in statements:
                        _apply(db, statement, writes, matched)
        queued = Status.QUEUED  # read once: an enum member read costs about 90 ns on 3.11
        if any(
            ok and w.fields.get("status") == queued for w, ok in zip(writes, matched, strict=True)
        ):
            self.notify()
        return matched

    def expired(self, now: datetime, limit: int = 100) -> list[Task]:
        sql = (
            SELECT
            + " WHERE status = 'running' AND lease_expires < ? ORDER BY lease_expires LIMIT ?"
        )
        with self._guard() as db:
            rows = db.execute(sql, (to_micros(now), limit)).fetchall()
        return [_row_to_task(row) for row in rows]

    def next_run_at(self, exclude: Collection[str] = ()) -> datetime | None:
        statements = (NEXT_UNDELAYED, NEXT_DELAYED)
        params: tuple[str, ...] = ()
        if exclude:  # the walk reads each passed-over task's row for its party: few, as a rule
            params = tuple(exclude)
            left_out = f" AND party NOT IN ({', '.join('?' * len(params))}) ORDER BY"
            statements = tuple(sql.replace(" ORDER BY", left_out, 1) for sql in statements)
        with self._guard() as db:
            found = [row[0] for sql in statements for row in db.execute(sql, params)]
        return from_micros(min(found)) if found else None

    def stats(self, now: datetime) -> dict[str, Any]:
        """Counts from the ``totals`` and ``ended`` tables and the running tasks (``tally``);
        ``due`` by counting, in the order index, whichever side of ``now`` is smaller (the due
        tasks, or the queued ones not yet due): both are counted up to a cap that grows fourfold
        until one side ends under it, so the cost is a few times the smaller side, not the
        table."""
        now_us = to_micros(now)
        with self._guard() as db:
            groups = tally(db.execute(_TALLIES))
            queued = sum(n for _, status, n in groups if status == "queued")
            cap = STATS_COUNT_CAP
            while True:
                due = db.execute(_DUE_CAPPED, (now_us, now_us, cap)).fetchone()[0]
                if due < cap:
                    break
                waiting = db.execute(_WAITING_CAPPED, (now_us, cap)).fetchone()[0]
                if waiting < cap:
                    due = queued - waiting - db.execute(_DELAYED, (now_us, now_us)).fetchone()[0]
                    break
                cap *= 4
            row = db.execute(_OLDEST_DUE, (now_us, now_us)).fetchone()
            pruned = db.execute("SELECT value FROM meta WHERE name = 'pruned'").fetchone()[0]
        oldest = None if row is None else from_micros(row[0])
        return assemble_stats(groups, due, oldest, pruned)

    def beat(self, record: dict[str, Any], now: datetime) -> None:
        with self._guard(write=True) as db:
            db.execute(
                "INSERT INTO schedulers (id, heartbeat, record) VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET heartbeat = excluded.heartbeat, record = excluded.record",
                (record["id"], to_micros(now), json.dumps(record, separators=(",", ":"))),
            )

    def schedulers(self, since: datetime | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT heartbeat, record FROM schedulers", []
        if since is not None:
            sql, params = sql + " WHERE heartbeat >= ?", [to_micros(since)]
        with self._guard() as db:
            rows = db.execute(sql, params).fetchall()
        records = [{**json.loads(record), "heartbeat": from_micros(beat)} for beat, record in rows]
        return sorted(records, key=lambda r: (str(r.get("started")), r["id"]))

    def forget_schedulers(self, before: datetime) -> int:
        with self._guard(write=True) as db:
            return db.execute(
                "DELETE FROM schedulers WHERE heartbeat < ?", (to_micros(before),)
            ).rowcount

    def explain_claim(self, now: datetime) -> list[str]:
        """The query plan of the due-task claim's inner select (for benchmarks and tests)."""
        now_us = to_micros(now)
        sql = (
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE status = 'queued' AND timestamp <= ? "
            "AND run_at <= ?" + ORDER + " LIMIT 16"
        )
        with self._guard() as db:
            return [row[-1] for row in db.execute(sql, (now_us, now_us)).fetchall()]
