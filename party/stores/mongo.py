"""MongoStore: the production store, one ``tasks`` collection shared by many servers and schedulers.

Every claim and every fenced write is an atomic single-document update, so a failover can cut a
call short but never leave half of one document written; writes are acknowledged by the majority
and reads go to the primary. Around that:

- A batch is added in one transaction where the deployment has them (a replica set); elsewhere
  its documents go in as ``adding`` (matched by no claim, read or count) and become ``queued``
  with one ``update_many``: a failure before that leaves nothing visible, and what went in is
  removed (a failure inside that last update can still leave part of a batch: full atomicity
  needs a replica set, see docs/mongodb.md).
- A claim takes the heads of the queue with one filtered ``update_many`` read back by its token
  (from the primary), and after a lost race the rest one ``find_one_and_update`` at a time, so a
  claimer never loses every race; after an error the tasks claimed under the call's token but
  never returned are handed back at once, their attempt given back.
- A fenced write that does not match is checked against the document: if it already holds the
  write (an earlier try landed before the connection dropped), it counts as applied.
- A write whose values BSON cannot hold (a result that makes the document pass 16 MiB) fails its
  task instead, once, and the other writes of the batch go on.
- One change stream per scheduler (``relay_wakeups``), fanned out to its workers through the local
  wake-up channel.

This module and ``mongo_client`` are the only ones that import pymongo. ``bulk_write`` is avoided:
mongomock mishandles ``UpdateOne`` under current pymongo.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pymongo
from bson import Binary, ObjectId, encode
from pymongo import MongoClient, ReadPreference, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from ..errors import ConfigError, StoreUnavailable, ValidationError
from ..model import Status, Task, Write
from ..timestamps import format_timestamp, system_now
from .base import (
    PRUNABLE,
    Finding,
    KeyedAdd,
    KeyRecord,
    KeyTaken,
    OrderKey,
    Store,
    assemble_stats,
    check_batch_singletons,
    singleton_conflict,
)
from .mongo_client import (
    INDEXES,
    client_options_for,
    guard,
    index_problems,
    is_unavailable,
    remember_secret,
    scrub,
    shown,
    write_concern_for,
)
from .mongo_codec import (
    ADDING,
    ORDER,
    UNCLAIM,
    VISIBLE,
    claim_update,
    claimable,
    doc_to_task,
    due,
    landed,
    task_to_doc,
    truncate_to_millis,
    undelay,
    write_filter,
    write_update,
)
from .relay import ChangeRelay
from .wakeup import Listener, Notifier, channel_dir, listener_or_none

# Names older callers and tests import from here.
__all__ = ["MongoStore", "client_options_for", "write_concern_for"]

logger = logging.getLogger(__name__)

#: Seconds ``check_writable`` gives its write, server selection included.
WRITABLE_WAIT = 1.0
#: Largest BSON document MongoDB stores.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
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


# mongomock:// clients by host: every store of a process opened on one URL sees the same data.
_MOCK_CLIENTS: dict[str, Any] = {}


def connect(url: str, collection: str = "tasks", **client_options: Any) -> tuple[Any, Collection]:
    """The client and the tasks collection of ``url``, without a round trip to the server: the
    URL's write concern (majority unless it names one), and reads from the primary whatever it
    says (a claim read from a secondary could miss what the claim just won, a read after an add
    could miss the add). ``mongomock://host/db`` gives a mongomock one (for tests and
    ``party check``'s own tests)."""
    remember_secret(url)
    if url.startswith("mongomock://"):
        import mongomock  # a test dependency

        host, _, rest = url.removeprefix("mongomock://").partition("/")
        client: Any = _MOCK_CLIENTS.setdefault(host, mongomock.MongoClient())
        name = rest.partition("?")[0] or "party"
        majority = write_concern_for({})
        return client, client.get_database(name).get_collection(collection, write_concern=majority)
    options = client_options_for(url, **client_options)
    try:
        client = MongoClient(url, **options)
        database = client.get_default_database()
    except (ConfigurationError, InvalidURI, ValueError) as exc:
        raise ConfigError(f"store URL is not usable: {scrub(str(exc))}") from None
    concern = write_concern_for(client.write_concern.document)
    tasks = database.get_collection(
        collection, write_concern=concern, read_preference=ReadPreference.PRIMARY
    )
    return client, tasks


class MongoStore(Store):
    """Tasks in a MongoDB collection. Build it with ``from_url`` in production; tests pass a
    mongomock collection. Open a new instance in each process after a fork."""

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

    @classmethod
    def from_url(
        cls, url: str, *, collection: str = "tasks", prepare: bool = True, **client_options: Any
    ) -> MongoStore:
        """Connect to ``mongodb://host:port/dbname`` (the database name is required).

        Options in the URL win over Party's defaults (``client_options``, then ``DEFAULTS``), the
        write concern included; ``ConfigError`` says what is wrong with a URL, without its
        password, or names a conflicting index.
        """
        client, tasks = connect(url, collection, **client_options)
        try:
            return cls(tasks, client=client, prepare=prepare)
        except BaseException:
            client.close()
            raise

    def __repr__(self) -> str:
        return f"MongoStore({scrub(self._tasks.full_name)!r})"

    # -- set-up ----------------------------------------------------------------------------------

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

    # -- adding ----------------------------------------------------------------------------------

    def insert_many(self, tasks: Sequence[Task], key: KeyedAdd | None = None) -> list[Task]:
        if key is not None:
            return self._insert_keyed(tasks, key)
        check_batch_singletons(tasks)
        if not tasks:
            return []
        docs = [task_to_doc(task) for task in tasks]
        try:
            if self._use_transactions():
                self._insert_in_transaction(docs)
            else:
                self._insert_hidden(docs)
        except BulkWriteError as exc:
            raise self._insert_error(exc, tasks) from None
        except DuplicateKeyError as exc:
            raise self._duplicate(exc.details or {}, tasks, 0) from None
        except ValidationError as exc:
            raise self._unstorable(docs, exc) from None
        self.notify()
        return [doc_to_task(doc) for doc in docs]

    def _insert_in_transaction(self, docs: list[dict[str, Any]]) -> None:
        with guard(), self._client.start_session() as session:
            # A transaction commits with its own write concern, not the collection's.
            with session.start_transaction(write_concern=self._tasks.write_concern):
                self._tasks.insert_many(docs, ordered=True, session=session)

    def _insert_hidden(self, docs: list[dict[str, Any]]) -> None:
        """Insert ``docs`` as ``adding``, then give each its status with one update per status
        (one in practice); on any failure remove what went in and is not claimed."""
        statuses: dict[str, list[ObjectId]] = {}
        for doc in docs:
            statuses.setdefault(doc["status"], []).append(doc["_id"])
            doc["status"] = ADDING
        ids = [doc["_id"] for doc in docs]
        try:
            with guard():
                self._tasks.insert_many(docs, ordered=True)
                for status, chosen in statuses.items():
                    self._tasks.update_many(
                        {"_id": {"$in": chosen}, "status": ADDING}, {"$set": {"status": status}}
                    )
        except BaseException:
            self._discard(ids)
            raise
        finally:
            for status, chosen in statuses.items():
                wanted = set(chosen)
                for doc in docs:
                    if doc["_id"] in wanted:
                        doc["status"] = status

    def _discard(self, ids: list[ObjectId]) -> None:
        """Remove the documents of a failed add that no worker claimed (best effort)."""
        try:
            with guard():
                self._tasks.delete_many(
                    {"_id": {"$in": ids}, "status": {"$in": [ADDING, "queued"]}, "attempts": 0}
                )
        except (StoreUnavailable, PyMongoError) as exc:
            logger.warning(
                "MongoDB: %d tasks of a failed add could not be removed (%s); those still "
                "'adding' stay invisible and are removed later",
                len(ids),
                scrub(str(exc)),
            )

    def _insert_error(self, exc: BulkWriteError, tasks: Sequence[Task]) -> Exception:
        errors = exc.details.get("writeErrors") or [{}]
        first = errors[0]
        if first.get("code") == 11000:
            return self._duplicate(first, tasks, first.get("index", 0))
        if is_unavailable(exc):
            return StoreUnavailable(f"MongoDB cannot serve now: {scrub(str(exc))}")
        return StoreUnavailable(f"MongoDB refused the add: {scrub(str(exc))}")

    def _duplicate(self, error: dict[str, Any], tasks: Sequence[Task], index: int) -> Exception:
        """A duplicate key is a singleton conflict only when it is the singleton's index."""
        pattern = error.get("keyPattern") or {}
        message = str(error.get("errmsg", ""))
        if "singleton" in pattern or (not pattern and self._singleton_held(tasks[index])):
            return singleton_conflict(tasks[index], index)
        return StoreUnavailable(
            f"MongoDB: task id {tasks[index].id} of the batch is already stored (key "
            f"{pattern or message!r}); nothing was added, retry the request"
        )

    def _singleton_held(self, task: Task) -> bool:
        """Whether another stored task holds ``task``'s singleton key (for servers, and mongomock,
        whose duplicate-key errors do not say which index)."""
        if task.singleton is None:
            return False
        try:
            with guard():
                other = self._tasks.find_one(
                    {"singleton": task.singleton, "_id": {"$ne": ObjectId(task.id)}}, {"_id": 1}
                )
        except StoreUnavailable:
            return True  # the common case, by far
        return other is not None

    def _unstorable(self, docs: list[dict[str, Any]], exc: ValidationError) -> ValidationError:
        """Name the first document BSON cannot hold (an integer past 64 bits, a key with NUL, more
        than 16 MiB), with its index; the caller's own checks normally catch these first."""
        for index, doc in enumerate(docs):
            try:
                size = len(encode(doc))
            except Exception as error:  # noqa: BLE001 - any encoding error names the culprit
                return ValidationError(
                    f"item {index}: the task cannot be stored in MongoDB: {error}", index=index
                )
            if size > MAX_DOCUMENT_BYTES:
                return ValidationError(
                    f"item {index}: the task is {size} bytes of BSON, over MongoDB's 16 MiB",
                    index=index,
                )
        return exc

    # -- reading ---------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        with guard():
            doc = self._tasks.find_one({"_id": ObjectId(task_id), "status": {"$in": VISIBLE}})
        return None if doc is None else doc_to_task(doc)

    def query(
        self,
        *,
        status: Status | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        query: dict[str, Any] = {
            # Without a status, the five as an $in: an index that starts with status then serves
            # the queue order by merging five ranges, instead of a sort of every task.
            "status": str(status) if status is not None else {"$in": VISIBLE}
        }
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
        with guard():
            docs = list(self._tasks.find(query).sort(ORDER).limit(limit))
        return [doc_to_task(doc) for doc in docs]

    def expired(self, now: datetime, limit: int = 100) -> list[Task]:
        with guard():
            docs = list(
                self._tasks.find({"status": "running", "lease_expires": {"$lt": now}})
                .sort([("lease_expires", 1)])
                .limit(limit)
            )
        return [doc_to_task(doc) for doc in docs]

    def next_run_at(self) -> datetime | None:
        with guard():
            doc = self._tasks.find_one({"status": "queued"}, {"run_at": 1}, sort=[("run_at", 1)])
        return None if doc is None else doc["run_at"]

    def stats(self, now: datetime) -> dict[str, Any]:
        # Sorted on the keys of tasks_party and projected to them, the counts are read from that
        # index alone, without fetching a document.
        pipeline = [
            {"$match": {"status": {"$in": VISIBLE}}},
            {"$sort": {"party": 1, "status": 1}},
            {"$project": {"_id": 0, "party": 1, "status": 1}},
            {"$group": {"_id": {"party": "$party", "status": "$status"}, "n": {"$sum": 1}}},
        ]
        with guard():
            groups = list(self._tasks.aggregate(pipeline))
            count = self._tasks.count_documents(due(now))
            oldest = self._tasks.find_one(due(now), {"timestamp": 1}, sort=ORDER)
            pruned = self._meta.find_one({"_id": "pruned"}) or {}
        rows = ((g["_id"]["party"], g["_id"]["status"], g["n"]) for g in groups)
        oldest_due = None if oldest is None else oldest["timestamp"]
        return assemble_stats(rows, count, oldest_due, int(pruned.get("n", 0)))

    # -- claiming and fenced writes --------------------------------------------------------------

    def claim(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int] | None = None,
    ) -> list[Task]:
        update = claim_update(token, lease_expires)
        won: list[Task] = []
        with guard():
            self._tasks.update_many(*undelay(now))
        try:
            with guard():
                if limits:
                    self._claim_limited(limit, now, update, limits, won)
                elif self._claim_batch(limit, now, update, token, won):
                    while len(won) < limit:
                        # Another claimer took some of the batch: the rest one at a time, each
                        # the head of the queue taken atomically, so a claimer that comes
                        # second takes the next task instead of losing every race.
                        doc = self._tasks.find_one_and_update(
                            claimable(now), update, sort=ORDER,
                            return_document=ReturnDocument.AFTER,
                        )  # fmt: skip
                        if doc is None:
                            break
                        won.append(doc_to_task(doc))
        except BaseException as exc:
            # A claim that landed but whose answer was lost holds a task under this token that
            # nobody runs: hand those back now rather than charge an attempt after the lease.
            self._unclaim(token, [task.id for task in won])
            if won and isinstance(exc, StoreUnavailable):
                logger.warning("MongoDB: claim cut short after %d tasks: %s", len(won), exc)
                return won
            raise
        return won

    def _claim_batch(
        self, limit: int, now: datetime, update: dict[str, Any], token: str, won: list[Task]
    ) -> bool:
        """Claim up to ``limit`` heads of the queue in three round trips (their ids, one
        ``update_many`` filtered on the due condition again, the winners read back from the
        primary by token), into ``won`` in queue order; True when a race was lost (fewer won
        than were chosen), so more may be taken one at a time."""
        chosen = [
            doc["_id"]
            for doc in self._tasks.find(claimable(now), {"_id": 1}).sort(ORDER).limit(limit)
        ]
        if not chosen:
            return False
        result = self._tasks.update_many({**claimable(now), "_id": {"$in": chosen}}, update)
        if result.modified_count:
            docs = self._tasks.find({"_id": {"$in": chosen}, "lease": token})
            won.extend(sorted((doc_to_task(doc) for doc in docs), key=lambda t: t.order_key))
        return len(won) < len(chosen)

    def _claim_limited(
        self,
        limit: int,
        now: datetime,
        update: dict[str, Any],
        limits: Mapping[str, int],
        won: list[Task],
    ) -> None:
        """``claim`` with caps, into ``won``: read the heads of the queue in order, leaving out
        the parties found at their cap, and take each head by id (an uncapped one as is, a
        capped one with a free slot of its party: the unique ``tasks_slot`` index lets at most
        ``cap`` tasks of it run, however many claimers race)."""
        full: set[str] = set()
        while len(won) < limit:
            query = claimable(now)
            if full:
                query["party"] = {"$nin": sorted(full)}
            heads = list(self._tasks.find(query, {"party": 1}).sort(ORDER).limit(limit - len(won)))
            if not heads:
                return
            for head in heads:
                party = head["party"]
                if party in full:
                    continue
                one = {**claimable(now), "_id": head["_id"]}
                if party in limits:
                    doc = self._claim_slot(one, update, party, limits[party])
                    if doc is _AT_CAP:
                        full.add(party)
                        continue
                else:
                    doc = self._tasks.find_one_and_update(
                        one, update, return_document=ReturnDocument.AFTER
                    )
                if doc is not None:  # None: another claimer took it first
                    won.append(doc_to_task(doc))
                if len(won) == limit:
                    return

    def _claim_slot(self, one: dict[str, Any], update: dict[str, Any], party: str, cap: int) -> Any:
        """Claim the task of filter ``one`` in a free slot of ``party``: its document, None when
        the task was taken meanwhile, ``_AT_CAP`` when ``cap`` tasks of it run (a force-run
        counts while it runs, as on SQLite, though it holds no slot)."""
        running = list(self._tasks.find({"status": "running", "party": party}, {"slot": 1}))
        if len(running) >= cap:
            return _AT_CAP
        taken = {doc.get("slot") for doc in running}
        for n in range(cap):
            slot = f"{party}#{n}"
            if slot in taken:
                continue
            slotted = {**update, "$set": {**update["$set"], "slot": slot}}
            try:
                return self._tasks.find_one_and_update(
                    one, slotted, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                continue  # another claimer filled this slot since the look above
        return _AT_CAP

    def _unclaim(self, token: str, keep: list[str]) -> None:
        try:
            with guard():
                result = self._tasks.update_many(
                    {
                        "lease": token,
                        "status": "running",
                        "_id": {"$nin": [ObjectId(i) for i in keep]},
                    },
                    UNCLAIM,
                )
            if result.modified_count:
                logger.warning(
                    "MongoDB: %d tasks claimed by a call that failed were handed back",
                    result.modified_count,
                )
                self.notify()
        except (StoreUnavailable, PyMongoError) as exc:
            logger.warning(
                "MongoDB: tasks of a failed claim (token %s) could not be handed back now (%s); "
                "their lease will expire",
                token,
                scrub(str(exc)),
            )

    def claim_id(self, task_id: str, lease_expires: datetime, token: str) -> Task | None:
        with guard():
            doc = self._tasks.find_one_and_update(
                {"_id": ObjectId(task_id), "status": "queued"},
                claim_update(token, lease_expires),
                return_document=ReturnDocument.AFTER,
            )
        return None if doc is None else doc_to_task(doc)

    def update(self, write: Write) -> Task | None:
        with guard():
            doc = self._tasks.find_one_and_update(
                write_filter(write), write_update(write), return_document=ReturnDocument.AFTER
            )
            if doc is None and write.lease is not None:
                doc = self._tasks.find_one({"_id": ObjectId(write.task_id)})
                if not landed(write, doc):
                    doc = None
        if doc is None:
            return None
        if write.fields.get("status") == Status.QUEUED:
            self.notify()
        return doc_to_task(doc)

    def write_many(self, writes: Sequence[Write]) -> list[bool]:
        """Each write on its own: one that cannot be stored does not stop the others (see
        ``_apply``); an unavailable store stops the batch (the caller replays it, and the writes
        that landed count as applied then)."""
        matched = [self._apply(write) for write in writes]
        if any(
            ok and w.fields.get("status") == Status.QUEUED
            for w, ok in zip(writes, matched, strict=True)
        ):
            self.notify()
        return matched

    def _apply(self, write: Write) -> bool:
        try:
            with guard():
                return self._apply_one(write)
        except ValidationError as exc:
            # Its values cannot be stored (the result makes the document pass 16 MiB): the task
            # fails at once, with the reason, instead of re-running until its attempts run out.
            # The write is changed in place, so the caller reports what was stored.
            write.fields.update(_unstorable_failure(write, str(exc)))
            with guard():
                return self._apply_one(write)

    def _apply_one(self, write: Write) -> bool:
        result = self._tasks.update_one(write_filter(write), write_update(write))
        if result.matched_count:
            return True
        if write.lease is None:
            return False
        return landed(write, self._tasks.find_one({"_id": ObjectId(write.task_id)}))

    # -- retention and idempotent adds ------------------------------------------------------------

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

    def prune(self, statuses: Sequence[Status], before: datetime, limit: int) -> int:
        """Batched deletes, not a TTL index: a TTL index deletes on the server's schedule (about
        once a minute, in batches of its own choosing), keeps one fixed age per index (the
        settings would need a ``collMod`` at every change) and cannot tell ``completed_on``
        from ``created`` or keep the ``pruned`` counter. The counter is bumped right after the
        delete (no transaction): a crash in between undercounts that one batch."""
        chosen = [str(status) for status in statuses if status in PRUNABLE]
        if not chosen or limit <= 0:
            return 0
        query = {
            "status": {"$in": chosen},
            "$or": [
                {"completed_on": {"$lt": before}},
                {"completed_on": None, "created": {"$lt": before}},
            ],
        }
        with guard():
            ids = [doc["_id"] for doc in self._tasks.find(query, {"_id": 1}).limit(limit)]
            if not ids:
                return 0
            removed = self._tasks.delete_many({"_id": {"$in": ids}, "status": {"$in": chosen}})
            count = int(removed.deleted_count)
            if count:
                self._meta.update_one({"_id": "pruned"}, {"$inc": {"n": count}}, upsert=True)
        return count

    def prune_keys(self, before: datetime, limit: int) -> int:
        with guard():
            keys = self._keys
            ids = [doc["_id"] for doc in keys.find({"created": {"$lt": before}}, {"_id": 1})
                   .limit(limit)]  # fmt: skip
            if not ids:
                return 0
            return int(keys.delete_many({"_id": {"$in": ids}, "created": {"$lt": before}})
                       .deleted_count)  # fmt: skip

    def key_record(self, key: str) -> KeyRecord | None:
        with guard():
            doc = self._keys.find_one({"_id": key})
        return None if doc is None else _key_record(doc)

    def _insert_keyed(self, tasks: Sequence[Task], key: KeyedAdd) -> list[Task]:
        """An add under ``key``: a reservation first (the key is the ``_id``, so of two adds
        racing with one key one reserves, the other gets ``KeyTaken``), then the tasks (one
        transaction on a replica set), then the answer. Between two of these steps the key
        reads "in progress" (409); a reservation left so for ``KEY_STALE`` by a process that
        died is settled by the next add with that key: its tasks, if they went in, give the
        answer, else the reservation is taken over and the batch added."""
        record = {
            "_id": key.key,
            "digest": key.digest,
            "created": truncate_to_millis(key.created),
            "ids": [ObjectId(task.id) for task in tasks],
            "answer": None,
        }
        self._reserve(key, record)
        try:
            stored = self.insert_many(tasks)
        except BaseException:
            try:
                with guard():  # nothing was added: the key is free again
                    self._keys.delete_one({"_id": key.key, "created": record["created"],
                                           "answer": None})  # fmt: skip
            except (StoreUnavailable, PyMongoError) as exc:
                logger.warning("MongoDB: key %r stays reserved (%s)", key.key, scrub(str(exc)))
            raise
        with guard():
            self._keys.update_one(
                {"_id": key.key, "created": record["created"]},
                {"$set": {"answer": Binary(key.answer(stored))}},
            )
        return stored

    def _reserve(self, key: KeyedAdd, record: dict[str, Any]) -> None:
        """Insert ``record`` under its key, replacing an expired or abandoned one; else raise
        ``KeyTaken`` with the live record."""
        for _ in range(5):
            try:
                with guard():
                    self._keys.insert_one(record)
                return
            except DuplicateKeyError:
                pass
            with guard():
                found = self._keys.find_one({"_id": key.key})
            if found is None:
                continue  # pruned meanwhile: try again
            expired = found["created"] < key.expired_before
            abandoned = (
                found.get("answer") is None
                and found["digest"] == key.digest
                and found["created"] < key.created - KEY_STALE
            )
            if abandoned and not expired:
                answer = self._settle(found, key)
                if answer is not None:
                    found = {**found, "answer": answer}
                    raise KeyTaken(_key_record(found))
            if expired or abandoned:
                with guard():  # conditional on what was read: one replacer wins
                    if self._keys.find_one_and_replace(
                        {
                            "_id": key.key,
                            "created": found["created"],
                            "answer": found.get("answer"),
                        },
                        record,
                    ):
                        return
                continue
            raise KeyTaken(_key_record(found))
        raise StoreUnavailable(f"MongoDB: the record of idempotency key {key.key!r} keeps changing")

    def _settle(self, found: dict[str, Any], key: KeyedAdd) -> bytes | None:
        """The answer of an abandoned reservation whose tasks went in (kept now), or None when
        none did (the add never happened)."""
        with guard():
            docs = {doc["_id"]: doc for doc in self._tasks.find(
                {"_id": {"$in": found.get("ids", [])}, "status": {"$in": VISIBLE}})}  # fmt: skip
        if not docs:
            return None
        answer = key.answer([doc_to_task(docs[i]) for i in found["ids"] if i in docs])
        with guard():
            self._keys.update_one(
                {"_id": key.key, "created": found["created"], "answer": None},
                {"$set": {"answer": Binary(answer)}},
            )
        return answer

    # -- schedulers ------------------------------------------------------------------------------

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

    # -- health, wake-ups, housekeeping ----------------------------------------------------------

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

    # -- what an operator checks -----------------------------------------------------------------

    def describe(self) -> list[Finding]:
        from .mongo_check import describe_deployment  # only `party check` needs it

        return describe_deployment(self, self._tasks, self._client)

    def explain_claim(self, now: datetime) -> dict[str, Any]:
        """The winning plan of the due-task query (for benchmarks and tests on a real server)."""
        with guard():
            return self._tasks.find(claimable(now)).sort(ORDER).limit(16).explain()


#: What ``_claim_slot`` answers for a handler at its cap.
_AT_CAP = object()
#: An idempotency key reserved this long without an answer was left by a process that died.
KEY_STALE = timedelta(minutes=1)


def _key_record(doc: dict[str, Any]) -> KeyRecord:
    answer = doc.get("answer")
    return KeyRecord(doc["digest"], doc["created"], None if answer is None else bytes(answer))


def _unstorable_failure(write: Write, reason: str) -> dict[str, Any]:
    """The fields that fail a run whose outcome cannot be stored, keeping its times."""
    fields: dict[str, Any] = {
        "result": None,
        "last_error": {
            "type": "UnstorableResult",
            "message": f"the run's outcome cannot be stored in MongoDB ({reason}); the task "
            "fails without a retry",
            "traceback": None,
            "at": format_timestamp(system_now()),
        },
    }
    if "status" in write.fields:
        fields.update(status=Status.FAILED, singleton=None)
    return fields
