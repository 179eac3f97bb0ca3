"""Adding tasks to MongoDB: a batch all or nothing, the singleton rule, and adds under an
idempotency key.

A batch is added in one transaction where the deployment has them (a replica set); elsewhere its
documents go in as ``adding`` (matched by no claim, read or count) and become ``queued`` with one
``update_many``: a failure before that leaves nothing visible, and what went in is removed (a
failure inside that last update can still leave part of a batch: full atomicity needs a replica
set, see docs/mongodb.md). An add under a key reserves the key first (the key is the ``_id`` of
its record), then adds the batch, then keeps the answer. ``MongoAdds`` adds these to
``MongoCollection``; ``MongoStore`` (``mongo``) builds on it. Imports pymongo and bson (their
home), ``errors``, ``model``, ``stores.base`` and the other ``mongo_*`` modules: never
``handler``, ``registry`` or ``queue``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import Binary, ObjectId, encode
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ..errors import StoreUnavailable, ValidationError
from ..model import Task
from .base import KeyedAdd, KeyRecord, KeyTaken, check_batch_singletons, singleton_conflict
from .mongo_client import guard, is_unavailable, scrub
from .mongo_codec import ADDING, VISIBLE, doc_to_task, task_to_doc, truncate_to_millis
from .mongo_collection import MongoCollection

# The logger of the store as a whole (its name from before the store had several modules).
logger = logging.getLogger("party.stores.mongo")

#: Largest BSON document MongoDB stores.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: An idempotency key reserved this long without an answer was left by a process that died.
KEY_STALE = timedelta(minutes=1)


class MongoAdds(MongoCollection):
    """Adds to the tasks collection, plain and keyed. Abstract: ``MongoStore`` is the store."""

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

    def key_record(self, key: str) -> KeyRecord | None:
        with guard():
            doc = self._keys.find_one({"_id": key})
        return None if doc is None else _key_record(doc)

    def prune_keys(self, before: datetime, limit: int) -> int:
        with guard():
            keys = self._keys
            ids = [doc["_id"] for doc in keys.find({"created": {"$lt": before}}, {"_id": 1})
                   .limit(limit)]  # fmt: skip
            if not ids:
                return 0
            return int(keys.delete_many({"_id": {"$in": ids}, "created": {"$lt": before}})
                       .deleted_count)  # fmt: skip

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


def _key_record(doc: dict[str, Any]) -> KeyRecord:
    answer = doc.get("answer")
    return KeyRecord(doc["digest"], doc["created"], None if answer is None else bytes(answer))
