"""The Mongo store's collection: one process's hold on the ``tasks`` collection and its companions.

``MongoCollection`` opens the collection (``mongo_client.connect``), makes the indexes of
``INDEXES`` (after one look at those present), knows whether the deployment runs transactions,
holds the companion collections (``.meta``, ``.keys``, ``.schedulers``, ``.health``) and the
schedulers' heartbeats, checks that the store takes a write, carries the wake-up channel (one
change stream per scheduler, ``relay_wakeups``, fanned out to its workers through the local
channel), removes what dead adders left, and describes the deployment: the half of ``Store`` that
is about the collection, not the tasks' rules (``MongoAdds`` in ``mongo_adds``, then
``MongoStore`` in ``mongo``, add those). Imports pymongo (its home, with the other ``mongo_*``
modules), ``errors``, ``timestamps``, ``stores.base``, ``relay``, ``wakeup`` and
``mongo_client``: never ``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from ..errors import ConfigError, StoreUnavailable
from ..timestamps import system_now
from .base import Finding, Store
from .mongo_client import INDEXES, guard, index_problems, scrub, shown
from .mongo_codec import ADDING, truncate_to_millis
from .relay import ChangeRelay
from .wakeup import Listener, Notifier, channel_dir, listener_or_none

# The logger of the store as a whole (its name from before the store had several modules).
logger = logging.getLogger("party.stores.mongo")

#: Seconds ``check_writable`` gives its write, server selection included.
WRITABLE_WAIT = 1.0
#: Documents of a batch left ``adding`` this long ago (their adder died between its two writes)
#: are removed by ``maintain``.
STALE_ADDING = timedelta(minutes=10)
#: Seconds between two passes of ``maintain``.
MAINTAIN_EVERY = 60.0

# Inserts of queued tasks, and updates that make a task queued (the second write of an add, a
# retry, a recurring re-queue, a hand-back).
_QUEUED_CHANGES = [
    {
        "$match": {
            "$or": [
                {"operationType": "insert", "fullDocument.status": "queued"},
                {"updateDescription.updatedFields.status": "queued"},
            ]
        }
    },
    {"$project": {"_id": 1}},
]


class MongoCollection(Store):
    """The tasks collection of a MongoDB database and its companions. Abstract: ``MongoStore``
    is the store. Open a new instance in each process after a fork."""

    precision_micros = 1000

    def __init__(self, collection: Collection, *, client: Any = None, prepare: bool = True) -> None:
        """``prepare=False`` skips ``ensure_indexes`` (``party check`` reports, never creates)."""
        self._tasks = collection
        self._client = client
        self._wake_dir = channel_dir("mongodb:" + collection.full_name)
        self._notifier: Notifier | None = None
        self._relay: ChangeRelay | None = None
        self._transactions: bool | None = None
        self._maintained = float("-inf")
        if prepare:
            self.ensure_indexes()

    def ensure_indexes(self) -> None:
        """Create the missing indexes of ``INDEXES``, after one look at those present: a process
        whose indexes are in place writes nothing. ``ConfigError`` names an index that clashes
        with Party's (same keys, other name; same name, other options) and how to fix it."""
        with guard():
            present = self._tasks.index_information()
        missing, problems = index_problems(present)
        if problems:
            raise ConfigError(f"MongoDB collection {self}: " + "; ".join(problems))
        if "tasks_ready" in missing:
            # Documents written before the ready mark: a queued one is ready unless a retry
            # delay moved its run_at past its timestamp (once, when the index is first made).
            with guard():
                self._tasks.update_many(
                    {"status": "queued", "ready": {"$exists": False}},
                    [{"$set": {"ready": {"$lte": ["$run_at", "$timestamp"]}}}],
                )
        for name in missing:
            keys, options = INDEXES[name]
            try:
                with guard():
                    self._tasks.create_index(keys, name=name, **options)
            except OperationFailure as exc:  # 85/86: another process made a different one
                raise ConfigError(
                    f"MongoDB collection {self}: cannot create index {name!r}: "
                    f"{scrub(str(exc))}; run `party check` to see the indexes"
                ) from None

    def _use_transactions(self) -> bool:
        """True when the deployment runs multi-document transactions (a replica set or a
        sharded cluster), as far as the client has seen it."""
        if self._transactions is None:
            kind = getattr(
                getattr(self._client, "topology_description", None), "topology_type_name", ""
            )
            self._transactions = kind in ("ReplicaSetWithPrimary", "Sharded")
        return self._transactions

    @property
    def _meta(self) -> Collection:
        """Counters that outlive the tasks they count (``pruned``)."""
        return self._tasks.database.get_collection(
            self._tasks.name + ".meta", write_concern=self._tasks.write_concern
        )

    @property
    def _keys(self) -> Collection:
        """Records of adds under an idempotency key, by key (``_id``: unique)."""
        return self._tasks.database.get_collection(
            self._tasks.name + ".keys", write_concern=self._tasks.write_concern
        )

    @property
    def _schedulers(self) -> Collection:
        return self._tasks.database.get_collection(
            self._tasks.name + ".schedulers", write_concern=self._tasks.write_concern
        )

    def beat(self, record: dict[str, Any], now: datetime) -> None:
        with guard():
            self._schedulers.replace_one(
                {"_id": record["id"]},
                {"record": record, "heartbeat": truncate_to_millis(now)},
                upsert=True,
            )

    def schedulers(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = {} if since is None else {"heartbeat": {"$gte": since}}
        with guard():
            docs = list(self._schedulers.find(query))
        records = [{**doc["record"], "heartbeat": doc["heartbeat"]} for doc in docs]
        return sorted(records, key=lambda r: (str(r.get("started")), r["id"]))

    def forget_schedulers(self, before: datetime) -> int:
        with guard():
            return int(self._schedulers.delete_many({"heartbeat": {"$lt": before}}).deleted_count)

    def ping(self) -> None:
        with guard():
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
                f"MongoDB cannot take a write on {self}: {scrub(str(exc))}"
            ) from shown(exc)

    def listen(self) -> Listener | None:
        """The local wake-up channel: fed by this machine's adds and by the one change stream its
        scheduler follows (``relay_wakeups``), never a stream per worker."""
        return listener_or_none(self._wake_dir)

    def relay_wakeups(self) -> ChangeRelay | None:
        """Follow the change stream (a replica set) and wake this machine's workers on each
        queued task; None where the deployment has no change streams (a standalone server,
        mongomock: wake-ups then reach this machine only, polling the rest)."""
        try:
            with guard():
                self._tasks.watch(_QUEUED_CHANGES, max_await_time_ms=1000).close()
        # OperationFailure: a standalone server; the others: mongomock, which has no watch().
        except (OperationFailure, StoreUnavailable, NotImplementedError, TypeError) as exc:
            logger.info(
                "no change stream on %s (%s); wake-ups reach this machine only",
                self,
                scrub(str(exc)),
            )
            return None
        notifier = Notifier(self._wake_dir)

        def open_stream(token: Any) -> Any:
            with guard():
                return self._tasks.watch(
                    _QUEUED_CHANGES, max_await_time_ms=1000, resume_after=token
                )

        self._relay = ChangeRelay(open_stream, notifier, describe=repr(self)).start()
        logger.info("following a change stream on %s for this machine's workers", self)
        return self._relay

    def notify(self) -> None:
        if self._notifier is None:
            self._notifier = Notifier(self._wake_dir)
        self._notifier.notify()

    def maintain(self) -> None:
        """Remove the documents of adds whose process died between their two writes (at most
        once a minute: the scheduler calls this on every tick)."""
        if time.monotonic() < self._maintained + MAINTAIN_EVERY:
            return
        self._maintained = time.monotonic()
        try:
            with guard():
                self._tasks.delete_many(
                    {"status": ADDING, "created": {"$lt": system_now() - STALE_ADDING}}
                )
        except (StoreUnavailable, PyMongoError) as exc:
            logger.debug("MongoDB maintenance skipped: %s", scrub(str(exc)))

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._notifier is not None:
            self._notifier.close()
        if self._client is not None:
            self._client.close()

    def describe(self) -> list[Finding]:
        from .mongo_check import describe_deployment  # only `party check` needs it

        return describe_deployment(self, self._tasks, self._client)
