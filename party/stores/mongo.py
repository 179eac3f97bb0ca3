"""MongoStore: the production store, one ``tasks`` collection shared by many servers and schedulers.

Every claim and every fenced write is an atomic single-document update (or a filtered
``update_many`` whose winners are read back by their claim token); writes are acknowledged by the
majority. BSON keeps milliseconds, so ``timestamp`` and ``run_at`` are rounded *up* (no task starts
before its time) and other times are truncated, and what is returned is what is stored. This is the
only module that imports pymongo. ``bulk_write`` is avoided: mongomock mishandles ``UpdateOne``
under current pymongo.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, MongoClient, ReturnDocument, WriteConcern
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from ..errors import ConfigError, StoreUnavailable
from ..model import TASK_FIELDS, FieldSpec, Kind, Status, Task, Write
from ..timestamps import round_up_to_millis
from .base import (
    OrderKey,
    Store,
    assemble_stats,
    check_batch_singletons,
    singleton_conflict,
)
from .wakeup import Listener, Notifier, channel_dir, listener_or_none

logger = logging.getLogger(__name__)

ORDER = [
    ("timestamp", ASCENDING),
    ("attempts", ASCENDING),
    ("created", ASCENDING),
    ("_id", ASCENDING),
]
_CLAIM_RETRIES = 3
#: Client options Party sets unless the URL (or the caller) sets them. Naive datetimes (UTC) are
#: what the rest of Party handles, so ``tz_aware`` is not one a URL can change.
DEFAULTS: dict[str, Any] = {"serverSelectionTimeoutMS": 5000}
#: Seconds ``check_writable`` gives its write, server selection included.
WRITABLE_WAIT = 1.0


def client_options_for(url: str, **given: Any) -> dict[str, Any]:
    """The keyword options ``MongoClient(url, ...)`` gets: ``given``, then ``DEFAULTS``, leaving
    out any option the URL sets itself (pymongo lets a keyword override the URL)."""
    query = url.partition("?")[2]
    in_url = {part.split("=", 1)[0].lower() for part in re.split("[&;]", query) if part}
    options = {name: value for name, value in given.items() if name.lower() not in in_url}
    for name, value in DEFAULTS.items():
        if name.lower() not in in_url:
            options.setdefault(name, value)
    options["tz_aware"] = False
    return options


def write_concern_for(document: dict[str, Any]) -> WriteConcern:
    """The write concern of the tasks: the URL's (``document``), majority unless it names one."""
    return WriteConcern(
        w=document.get("w", "majority"), wtimeout=document.get("wtimeout"), j=document.get("j")
    )


# Passwords of the URLs this process opened: never shown in an error or a log line. This module
# may not import ``log`` (a lower layer), so it hides the secrets themselves, wherever they occur.
_SECRETS: set[str] = set()


def _remember_secret(url: str) -> None:
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    if password:
        _SECRETS.update({password, unquote_plus(password)})


def _scrub(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


def _truncate_to_millis(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _normalizer(spec: FieldSpec) -> Callable[[Any], Any] | None:
    """How a value of ``spec`` becomes what BSON keeps (None: as it is). Times keep milliseconds:
    a time the task must not start before is rounded up, any other truncated."""
    if spec.kind == Kind.TIME:
        return round_up_to_millis if spec.not_before else _truncate_to_millis
    if spec.kind == Kind.STATUS:
        return str
    return None


_NORMALIZERS = {spec.name: _normalizer(spec) for spec in TASK_FIELDS}
# The fields of a document besides its ``_id``, each with its normalizer.
_DOC_FIELDS = [(spec.name, _NORMALIZERS[spec.name]) for spec in TASK_FIELDS if spec.kind != Kind.ID]


def _normalize(name: str, value: Any) -> Any:
    normalize = _NORMALIZERS.get(name)
    return value if normalize is None or value is None else normalize(value)


def _task_to_doc(task: Task) -> dict[str, Any]:
    """The document of ``task``; a field holding None is left out (so a partial index skips it)."""
    doc: dict[str, Any] = {"_id": ObjectId(task.id)}
    for name, normalize in _DOC_FIELDS:
        value = getattr(task, name)
        if value is not None:
            doc[name] = value if normalize is None else normalize(value)
    return doc


def _decoder(spec: FieldSpec) -> Callable[[dict[str, Any]], Any]:
    """Read ``spec`` from a document; a field the document lacks (one left out for holding None,
    or declared after the document was written) reads its default."""
    name = spec.name
    if spec.kind == Kind.ID:
        return lambda doc: str(doc["_id"])
    if spec.kind == Kind.STATUS:
        return lambda doc: Status(doc[name])
    if spec.kind == Kind.BOOL:
        default = bool(spec.default) if not spec.required else False
        return lambda doc: bool(doc.get(name, default))
    if spec.required:
        if spec.kind == Kind.JSON:  # an empty object is read back as one, whatever was kept
            return lambda doc: doc.get(name) or {}
        return lambda doc: doc[name]
    default = spec.default
    return lambda doc: doc.get(name, default)


_DECODERS = [_decoder(spec) for spec in TASK_FIELDS]


def _doc_to_task(doc: dict[str, Any]) -> Task:
    return Task(*[decode(doc) for decode in _DECODERS])


def _filter(write: Write) -> dict[str, Any]:
    query: dict[str, Any] = {"_id": ObjectId(write.task_id)}
    if write.lease is not None:
        query["lease"] = write.lease
    if write.statuses is not None:
        query["status"] = {"$in": [str(s) for s in write.statuses]}
    return query


def _update(write: Write) -> dict[str, Any]:
    sets = {k: _normalize(k, v) for k, v in write.fields.items() if v is not None}
    unsets = {k: "" for k, v in write.fields.items() if v is None}
    update: dict[str, Any] = {}
    if sets:
        update["$set"] = sets
    if unsets:
        update["$unset"] = unsets
    return update


def _due(now: datetime) -> dict[str, Any]:
    return {"status": "queued", "timestamp": {"$lte": now}, "run_at": {"$lte": now}}


class MongoStore(Store):
    """Tasks in a MongoDB collection. Build it with ``from_url`` in production; tests pass a
    mongomock collection. Open a new instance in each process after a fork."""

    precision_micros = 1000

    def __init__(self, collection: Collection, *, client: Any = None) -> None:
        self._tasks = collection
        self._client = client
        self._wake_dir = channel_dir("mongodb:" + collection.full_name)
        self._notifier: Notifier | None = None
        self.ensure_indexes()

    @classmethod
    def from_url(cls, url: str, *, collection: str = "tasks", **client_options: Any) -> MongoStore:
        """Connect to ``mongodb://host:port/dbname`` (the database name is required).

        Options in the URL win over Party's defaults (``client_options``, then ``DEFAULTS``), the
        write concern included; ``ConfigError`` says what is wrong with a URL, without its password.
        """
        _remember_secret(url)
        options = client_options_for(url, **client_options)
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(url, **options)
            database = client.get_default_database()
        except (ConfigurationError, InvalidURI, ValueError) as exc:
            raise ConfigError(f"store URL is not usable: {_scrub(str(exc))}") from None
        concern = write_concern_for(client.write_concern.document)
        tasks = database.get_collection(collection, write_concern=concern)
        try:
            return cls(tasks, client=client)
        except BaseException:
            client.close()
            raise

    def __repr__(self) -> str:
        return f"MongoStore({_scrub(self._tasks.full_name)!r})"

    def ensure_indexes(self) -> None:
        """Create the indexes the queries rely on (idempotent)."""
        with _guard():
            self._tasks.create_index([("status", ASCENDING), *ORDER], name="tasks_order")
            self._tasks.create_index(
                [("run_at", ASCENDING)],
                name="tasks_run_at",
                partialFilterExpression={"status": "queued"},
            )
            self._tasks.create_index(
                [("lease_expires", ASCENDING)],
                name="tasks_lease",
                partialFilterExpression={"status": "running"},
            )
            self._tasks.create_index(
                [("singleton", ASCENDING)],
                name="tasks_singleton",
                unique=True,
                partialFilterExpression={"singleton": {"$exists": True}},
            )

    def insert_many(self, tasks: Sequence[Task]) -> list[Task]:
        check_batch_singletons(tasks)
        if not tasks:
            return []
        docs = [_task_to_doc(task) for task in tasks]
        with _guard():
            try:
                self._tasks.insert_many(docs, ordered=True)
            except BulkWriteError as exc:
                # An ordered insert stops at the first error: undo what went in before it, so the
                # batch stays all or nothing for every reader that does not look in between.
                inserted = exc.details.get("nInserted", 0)
                if inserted:
                    self._tasks.delete_many({"_id": {"$in": [d["_id"] for d in docs[:inserted]]}})
                errors = exc.details.get("writeErrors") or [{}]
                if errors[0].get("code") == 11000:
                    index = errors[0].get("index", inserted)
                    raise singleton_conflict(tasks[index], index) from None
                raise
        self.notify()
        return [_doc_to_task(doc) for doc in docs]

    def get(self, task_id: str) -> Task | None:
        with _guard():
            doc = self._tasks.find_one({"_id": ObjectId(task_id)})
        return None if doc is None else _doc_to_task(doc)

    def query(
        self,
        *,
        status: Status | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        query: dict[str, Any] = {}
        if status is not None:
            query["status"] = str(status)
        if party is not None:
            query["party"] = party
        if after is not None:
            ts, attempts, created, id_ = after
            oid = ObjectId(id_)
            query["$or"] = [
                {"timestamp": {"$gt": ts}},
                {"timestamp": ts, "attempts": {"$gt": attempts}},
                {"timestamp": ts, "attempts": attempts, "created": {"$gt": created}},
                {"timestamp": ts, "attempts": attempts, "created": created, "_id": {"$gt": oid}},
            ]
        with _guard():
            docs = list(self._tasks.find(query).sort(ORDER).limit(limit))
        return [_doc_to_task(doc) for doc in docs]

    def claim(self, limit: int, now: datetime, lease_expires: datetime, token: str) -> list[Task]:
        won: list[Task] = []
        with _guard():
            for _ in range(_CLAIM_RETRIES):
                want = limit - len(won)
                candidates = [
                    doc["_id"]
                    for doc in self._tasks.find(_due(now), {"_id": 1}).sort(ORDER).limit(want)
                ]
                if not candidates:
                    break
                # The filter repeats the due condition, so a task another claimer took in between
                # is not matched: each document is updated atomically, by one claimer only.
                result = self._tasks.update_many(
                    {"_id": {"$in": candidates}, **_due(now)},
                    {
                        "$set": {
                            "status": "running",
                            "lease": token,
                            "lease_expires": _truncate_to_millis(lease_expires),
                        },
                        "$inc": {"attempts": 1},
                    },
                )
                if result.modified_count:
                    docs = self._tasks.find({"_id": {"$in": candidates}, "lease": token})
                    won.extend(_doc_to_task(doc) for doc in docs)
                if result.modified_count == len(candidates) or len(won) >= limit:
                    break  # no contention, or enough: only a lost race is worth another look
        won.sort(key=lambda t: t.order_key)
        return won

    def claim_id(self, task_id: str, lease_expires: datetime, token: str) -> Task | None:
        with _guard():
            doc = self._tasks.find_one_and_update(
                {"_id": ObjectId(task_id), "status": "queued"},
                {
                    "$set": {
                        "status": "running",
                        "lease": token,
                        "lease_expires": _truncate_to_millis(lease_expires),
                    },
                    "$inc": {"attempts": 1},
                },
                return_document=ReturnDocument.AFTER,
            )
        return None if doc is None else _doc_to_task(doc)

    def update(self, write: Write) -> Task | None:
        with _guard():
            doc = self._tasks.find_one_and_update(
                _filter(write), _update(write), return_document=ReturnDocument.AFTER
            )
        if doc is None:
            return None
        if write.fields.get("status") == Status.QUEUED:
            self.notify()
        return _doc_to_task(doc)

    def write_many(self, writes: Sequence[Write]) -> list[bool]:
        with _guard():
            matched = [
                self._tasks.update_one(_filter(write), _update(write)).matched_count == 1
                for write in writes
            ]
        if any(
            ok and w.fields.get("status") == Status.QUEUED
            for w, ok in zip(writes, matched, strict=True)
        ):
            self.notify()
        return matched

    def expired(self, now: datetime, limit: int = 100) -> list[Task]:
        with _guard():
            docs = (
                self._tasks.find({"status": "running", "lease_expires": {"$lt": now}})
                .sort([("lease_expires", ASCENDING)])
                .limit(limit)
            )
            return [_doc_to_task(doc) for doc in docs]

    def next_run_at(self) -> datetime | None:
        with _guard():
            doc = self._tasks.find_one(
                {"status": "queued"}, {"run_at": 1}, sort=[("run_at", ASCENDING)]
            )
        return None if doc is None else doc["run_at"]

    def stats(self, now: datetime) -> dict[str, Any]:
        with _guard():
            groups = list(
                self._tasks.aggregate(
                    [
                        {
                            "$group": {
                                "_id": {"party": "$party", "status": "$status"},
                                "n": {"$sum": 1},
                            }
                        }
                    ]
                )
            )
            due = self._tasks.count_documents(_due(now))
            oldest = self._tasks.find_one(_due(now), {"timestamp": 1}, sort=ORDER)
        rows = ((g["_id"]["party"], g["_id"]["status"], g["n"]) for g in groups)
        return assemble_stats(rows, due, None if oldest is None else oldest["timestamp"])

    @property
    def _schedulers(self) -> Collection:
        return self._tasks.database.get_collection(
            self._tasks.name + ".schedulers", write_concern=self._tasks.write_concern
        )

    def beat(self, record: dict[str, Any], now: datetime) -> None:
        with _guard():
            self._schedulers.replace_one(
                {"_id": record["id"]},
                {"record": record, "heartbeat": _truncate_to_millis(now)},
                upsert=True,
            )

    def schedulers(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = {} if since is None else {"heartbeat": {"$gte": since}}
        with _guard():
            docs = list(self._schedulers.find(query))
        records = [{**doc["record"], "heartbeat": doc["heartbeat"]} for doc in docs]
        return sorted(records, key=lambda r: (str(r.get("started")), r["id"]))

    def forget_schedulers(self, before: datetime) -> int:
        with _guard():
            return int(self._schedulers.delete_many({"heartbeat": {"$lt": before}}).deleted_count)

    def ping(self) -> None:
        with _guard():
            self._tasks.database.command("ping")

    def check_writable(self) -> None:
        """Upsert one document of the ``<collection>.health`` collection with the write concern
        of the tasks (majority), within ``WRITABLE_WAIT``."""
        health = self._tasks.database.get_collection(
            self._tasks.name + ".health", write_concern=self._tasks.write_concern
        )
        try:
            with pymongo.timeout(WRITABLE_WAIT):
                health.update_one(
                    {"_id": "health"}, {"$currentDate": {"checked": True}}, upsert=True
                )
        except PyMongoError as exc:
            raise StoreUnavailable(
                f"MongoDB cannot take a write on {self}: {_scrub(str(exc))}"
            ) from _shown(exc)

    def listen(self) -> Listener | ChangeStreamListener | None:
        """A change stream where the deployment has one (a replica set: it reaches schedulers on
        every machine), else the local channel of schedulers on this machine."""
        try:
            stream = self._tasks.watch(_QUEUED_CHANGES, max_await_time_ms=1000)
        # OperationFailure: a standalone server; TypeError: mongomock, which has no watch().
        except (OperationFailure, NotImplementedError, TypeError) as exc:
            logger.info(
                "no change stream on %s (%s); wake-ups reach this machine only",
                self,
                _scrub(str(exc)),
            )
            return listener_or_none(self._wake_dir)
        logger.info("watching a change stream on %s for wake-ups", self)
        return ChangeStreamListener(stream)

    def notify(self) -> None:
        if self._notifier is None:
            self._notifier = Notifier(self._wake_dir)
        self._notifier.notify()

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.close()
        if self._client is not None:
            self._client.close()

    def explain_claim(self, now: datetime) -> dict[str, Any]:
        """The winning plan of the due-task query (for benchmarks and tests on a real server)."""
        with _guard():
            return self._tasks.find(_due(now)).sort(ORDER).limit(16).explain()


# Inserts, and updates that make a task queued (a retry, a recurring re-queue, a hand-back).
_QUEUED_CHANGES = [
    {
        "$match": {
            "$or": [
                {"operationType": "insert"},
                {"updateDescription.updatedFields.status": "queued"},
            ]
        }
    },
    {"$project": {"_id": 1}},
]


class ChangeStreamListener:
    """Turns a change stream into a readable descriptor: a thread follows the stream and writes
    one byte to a socket pair per change; if the stream breaks, the thread logs it and stops, and
    polling carries on alone."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._thread = threading.Thread(
            target=self._follow, name="party-change-stream", daemon=True
        )
        self._thread.start()

    def _follow(self) -> None:
        try:
            while self._stream.alive:
                if self._stream.try_next() is not None:
                    try:
                        self._write.send(b"!")
                    except BlockingIOError:
                        pass  # a wake-up is already pending
        except Exception as exc:  # the stream is a convenience; polling stays correct without it
            if self._stream.alive:
                logger.warning(
                    "change stream stopped (%s); falling back to polling", _scrub(str(exc))
                )

    def fileno(self) -> int:
        """The descriptor that becomes readable when a task was queued anywhere."""
        return self._read.fileno()

    def drain(self) -> int:
        """Consume every pending notification; return how many there were."""
        count = 0
        while True:
            try:
                count += len(self._read.recv(4096))
            except (BlockingIOError, InterruptedError):
                return count

    def close(self) -> None:
        """Stop following the stream."""
        self._stream.close()
        self._thread.join(timeout=2)
        self._read.close()
        self._write.close()


@contextmanager
def _guard() -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError:
        raise
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB did not answer: {_scrub(str(exc))}") from _shown(exc)
    except BulkWriteError:
        raise
    except PyMongoError as exc:
        if exc.has_error_label("RetryableWriteError") or exc.timeout:
            raise StoreUnavailable(f"MongoDB did not answer: {_scrub(str(exc))}") from _shown(exc)
        raise


def _shown(exc: BaseException) -> BaseException | None:
    """``exc`` as the cause of an error of ours, unless its text holds a password (a traceback
    would print it): then no cause."""
    text = str(exc)
    return exc if _scrub(text) == text else None
