"""Tasks as MongoDB documents, driven by ``model.TASK_FIELDS``; and the filters of the queue.

A task is one document whose ``_id`` is the ObjectId of its id; a field holding None is left out
(so the partial indexes skip it) and reads back as its default, as does a field declared after
the document was written. BSON keeps milliseconds: a time before which the task must not start
(``not_before``: ``timestamp``, ``run_at``) is rounded *up*, any other truncated, and what is
returned is what is stored. Imports ``bson`` (the ObjectId) but not pymongo.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId

from ..model import ALL_STATUSES, TASK_FIELDS, FieldSpec, Kind, Status, Task, Write
from ..timestamps import round_up_to_millis

ASCENDING = 1
#: The queue order, as a MongoDB sort.
ORDER = [("timestamp", ASCENDING), ("attempts", ASCENDING), ("created", ASCENDING),
         ("_id", ASCENDING)]  # fmt: skip
#: The status of the documents of a batch being added where the deployment has no transactions:
#: no claim, read or count matches it until the whole batch is made queued at once.
ADDING = "adding"
#: Every status a reader may see (never ``ADDING``): as ``{"$in": VISIBLE}`` it also lets an
#: index that starts with ``status`` serve a query without a status, merging its five ranges.
VISIBLE = list(ALL_STATUSES)


def truncate_to_millis(value: datetime) -> datetime:
    """Drop what BSON cannot keep below the millisecond."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _normalizer(spec: FieldSpec) -> Callable[[Any], Any] | None:
    """How a value of ``spec`` becomes what BSON keeps (None: as it is)."""
    if spec.kind == Kind.TIME:
        return round_up_to_millis if spec.not_before else truncate_to_millis
    if spec.kind == Kind.STATUS:
        return str
    return None


_NORMALIZERS = {spec.name: _normalizer(spec) for spec in TASK_FIELDS}
# The fields of a document besides its ``_id``, each with its normalizer.
_DOC_FIELDS = [(spec.name, _NORMALIZERS[spec.name]) for spec in TASK_FIELDS if spec.kind != Kind.ID]


def normalize(name: str, value: Any) -> Any:
    """``value`` of field ``name`` as the store keeps it."""
    normalizer = _NORMALIZERS.get(name)
    return value if normalizer is None or value is None else normalizer(value)


def task_to_doc(task: Task) -> dict[str, Any]:
    """The document of ``task``, with its ``ready`` mark."""
    doc: dict[str, Any] = {"_id": ObjectId(task.id)}
    for name, normalizer in _DOC_FIELDS:
        value = getattr(task, name)
        if value is not None:
            doc[name] = value if normalizer is None else normalizer(value)
    doc[READY] = doc["run_at"] <= doc["timestamp"]
    return doc


#: A field of the store's own (not a task field): False while a queued task waits out a retry
#: delay. The claim's index (``tasks_ready``) holds only queued tasks marked True, so the tasks
#: waiting for a retry never sit in its range; a claim first marks True those whose delay passed
#: (``UNDELAY``, through the small ``tasks_delayed`` index of the waiting ones).
READY = "ready"


def _decoder(spec: FieldSpec) -> Callable[[dict[str, Any]], Any]:
    name = spec.name
    if spec.kind == Kind.ID:
        return lambda doc: str(doc["_id"])
    if spec.kind == Kind.STATUS:
        return lambda doc: Status(doc[name])
    if spec.kind == Kind.BOOL:
        default = False if spec.required else bool(spec.default)
        return lambda doc: bool(doc.get(name, default))
    if spec.required:
        if spec.kind == Kind.JSON:  # an empty object reads back as one, whatever was kept
            return lambda doc: doc.get(name) or {}
        return lambda doc: doc[name]
    default = spec.default
    return lambda doc: doc.get(name, default)


_DECODERS = [_decoder(spec) for spec in TASK_FIELDS]


def doc_to_task(doc: dict[str, Any]) -> Task:
    """The task of a stored document."""
    return Task(*[decode(doc) for decode in _DECODERS])


def write_filter(write: Write) -> dict[str, Any]:
    """The filter of a conditional write: its id, and its lease token and statuses if given."""
    query: dict[str, Any] = {"_id": ObjectId(write.task_id)}
    if write.lease is not None:
        query["lease"] = write.lease
    if write.statuses is not None:
        query["status"] = {"$in": [str(s) for s in write.statuses]}
    return query


def write_update(write: Write) -> dict[str, Any]:
    """The update of a write: ``$set`` its values, ``$unset`` its Nones; a write that queues a
    task sets its ``ready`` mark: False for a retry (it moves ``run_at`` alone, to the end of a
    delay), True otherwise (a hand-back, a recurring re-queue moving ``timestamp`` with it)."""
    sets = {k: normalize(k, v) for k, v in write.fields.items() if v is not None}
    if write.fields.get("status") == Status.QUEUED:
        sets[READY] = "run_at" not in write.fields or "timestamp" in write.fields
    unsets = {k: "" for k, v in write.fields.items() if v is None}
    update: dict[str, Any] = {}
    if sets:
        update["$set"] = sets
    if unsets:
        update["$unset"] = unsets
    return update


def landed(write: Write, doc: dict[str, Any] | None) -> bool:
    """True when ``doc`` already holds every value ``write`` sets and lacks every one it clears:
    a replayed fenced write whose first try was applied (the lease it was fenced on is gone since,
    which is why the replay did not match). A run's write sets its own ``started_on`` and
    ``completed_on``, so another run's state does not pass for it."""
    if doc is None or write.lease is None:
        return False
    if doc.get("lease") is not None:
        return False
    for name, value in write.fields.items():
        if value is None:
            if name in doc:
                return False
        elif doc.get(name) != normalize(name, value):
            return False
    return True


def due(now: datetime) -> dict[str, Any]:
    """The filter of the due tasks at ``now`` (counts; the claim adds the ``ready`` mark)."""
    return {"status": "queued", "timestamp": {"$lte": now}, "run_at": {"$lte": now}}


def claimable(now: datetime) -> dict[str, Any]:
    """The claim's filter: the due tasks, within the range of the ``tasks_ready`` index."""
    return {"status": "queued", READY: True, "timestamp": {"$lte": now}, "run_at": {"$lte": now}}


def undelay(now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The filter and update that mark ready the queued tasks whose retry delay has passed."""
    return {"status": "queued", READY: False, "run_at": {"$lte": now}}, {"$set": {READY: True}}


def claim_update(token: str, lease_expires: datetime) -> dict[str, Any]:
    """The update of a claim: running, one more attempt, under ``token`` until ``lease_expires``."""
    return {
        "$set": {
            "status": "running",
            "lease": token,
            "lease_expires": truncate_to_millis(lease_expires),
        },
        "$inc": {"attempts": 1},
    }


#: Undoes a claim that its claimer never learnt of (see ``MongoStore.claim``).
UNCLAIM = {
    "$set": {"status": "queued"},
    "$unset": {"lease": "", "lease_expires": ""},
    "$inc": {"attempts": -1},
}
