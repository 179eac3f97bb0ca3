"""MongoStore: the production store, one ``tasks`` collection shared by many servers and schedulers.

Every claim and every fenced write is an atomic single-document update, so a failover can cut a
call short but never leave half of one document written; writes are acknowledged by the majority
and reads go to the primary. Around that:

- A batch is added in one transaction where the deployment has them (a replica set), elsewhere
  in two writes that leave nothing visible when the first fails (``mongo_adds``).
- A claim takes the heads of the queue with one filtered ``update_many`` read back by its token
  (from the primary), and after a lost race the rest one ``find_one_and_update`` at a time, so a
  claimer never loses every race; after an error the tasks claimed under the call's token but
  never returned are handed back at once, their attempt given back.
- A fenced write that does not match is checked against the document: if it already holds the
  write (an earlier try landed before the connection dropped), it counts as applied.
- A write whose values BSON cannot hold (a result that makes the document pass 16 MiB) fails its
  task instead, once, and the other writes of the batch go on.
- One change stream per scheduler (``relay_wakeups``), fanned out to its workers through the local
  wake-up channel (``mongo_collection``).

Here: the reads, retention, the claims and the fenced writes, on ``MongoAdds`` (``mongo_adds``:
the adds) on ``MongoCollection`` (``mongo_collection``: the collection, its indexes and
companions, health and wake-ups). These and the other ``mongo_*`` modules are the only ones that
import pymongo. ``bulk_write`` is avoided: mongomock mishandles ``UpdateOne`` under current
pymongo.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..errors import StoreUnavailable, ValidationError
from ..model import Status, Task, Write
from ..timestamps import format_timestamp, system_now
from .base import PRUNABLE, OrderKey, assemble_stats
from .mongo_adds import MongoAdds
from .mongo_client import client_options_for, connect, guard, scrub, write_concern_for
from .mongo_codec import (
    ORDER,
    UNCLAIM,
    VISIBLE,
    claim_update,
    claimable,
    doc_to_task,
    due,
    landed,
    undelay,
    write_filter,
    write_update,
)

# Names older callers and tests import from here.
__all__ = ["MongoStore", "client_options_for", "connect", "write_concern_for"]

logger = logging.getLogger(__name__)


class MongoStore(MongoAdds):
    """Tasks in a MongoDB collection. Build it with ``from_url`` in production; tests pass a
    mongomock collection. Open a new instance in each process after a fork."""

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

    def next_run_at(self, exclude: Collection[str] = ()) -> datetime | None:
        query: dict[str, Any] = {"status": "queued"}
        if exclude:
            query["party"] = {"$nin": list(exclude)}
        with guard():
            doc = self._tasks.find_one(query, {"run_at": 1}, sort=[("run_at", 1)])
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

    def explain_claim(self, now: datetime) -> dict[str, Any]:
        """The winning plan of the due-task query (for benchmarks and tests on a real server)."""
        with guard():
            return self._tasks.find(claimable(now)).sort(ORDER).limit(16).explain()


#: What ``_claim_slot`` answers for a handler at its cap.
_AT_CAP = object()


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
