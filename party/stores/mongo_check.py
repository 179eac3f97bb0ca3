"""What ``party check`` reports of a MongoDB deployment before it goes live.

The server's version; standalone, replica set or sharded (so whether change streams and
transactions are used, and whether a failover is possible); the indexes present against those
Party expects; the write concern and read preference in force; whether a change stream opens;
and the round trip of a claim (one that matches nothing, so it writes nothing). Each finding
that needs fixing carries the fix. Imported only by ``MongoStore.describe``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure

from ..timestamps import system_now
from .base import Finding, Store
from .mongo_client import guard, index_problems, scrub
from .mongo_codec import claim_update

#: Claims timed for the round-trip figure (the median is shown).
CLAIM_SAMPLES = 5
#: A claim round trip above this many milliseconds is worth a warning.
SLOW_CLAIM_MS = 50.0


def describe_deployment(store: Store, tasks: Any, client: Any) -> list[Finding]:
    """The findings of ``party check`` for the collection ``tasks``."""
    findings: list[Finding] = []
    with guard():
        try:
            version = tasks.database.command("buildInfo").get("version", "?")
        except (OperationFailure, NotImplementedError, KeyError):
            version = "unknown"
        findings.append(Finding("server version", str(version)))
        findings.append(_topology(tasks))
        findings.extend(_indexes(tasks))
        findings.append(_write_concern(tasks))
        preference = getattr(getattr(tasks, "read_preference", None), "name", "primary")
        findings.append(Finding("read preference (tasks)", str(preference).lower()))
        findings.append(_change_stream(tasks))
        findings.append(_claim_round_trip(tasks))
    return findings


def _topology(tasks: Any) -> Finding:
    try:
        hello = tasks.database.command("hello")
    except (OperationFailure, NotImplementedError):
        try:
            hello = tasks.database.command("ismaster")
        except (OperationFailure, NotImplementedError):
            hello = {}
    if hello.get("setName"):
        return Finding(
            "topology",
            f"replica set {hello['setName']!r} ({len(hello.get('hosts', []))} members): "
            "transactions for batch adds, change streams for wake-ups, failover",
        )
    if hello.get("msg") == "isdbgrid":
        return Finding("topology", "sharded cluster (through mongos); the tasks collection "
                       "should not be sharded")  # fmt: skip
    return Finding(
        "topology",
        "standalone: no failover, no transactions (a batch add is two writes, which a crash "
        "between them can cut), no change streams (wake-ups reach this machine only)",
        warning="run a replica set, even of one member (mongod --replSet rs0, then "
        "rs.initiate()); see docs/mongodb.md",
    )


def _indexes(tasks: Any) -> list[Finding]:
    present = tasks.index_information()
    missing, problems = index_problems(present)
    names = ", ".join(sorted(present))
    findings = [Finding("indexes present", names or "none")]
    if missing:
        findings.append(
            Finding(
                "indexes missing",
                ", ".join(missing),
                problem="start the server or a scheduler once (they create them), then check again",
            )
        )
    for problem in problems:
        findings.append(Finding("index conflict", problem.split(":")[0], problem=problem))
    return findings


def _write_concern(tasks: Any) -> Finding:
    document = tasks.write_concern.document
    w = document.get("w", 1)
    shown = ", ".join(f"{k}={v}" for k, v in document.items()) or "w=1 (server default)"
    if w == "majority":
        return Finding("write concern (tasks)", shown)
    return Finding(
        "write concern (tasks)",
        shown,
        problem="acknowledged writes can be lost on failover: remove w= from the store URL "
        "(Party's default is w=majority) or set w=majority",
    )


def _change_stream(tasks: Any) -> Finding:
    try:
        tasks.watch([], max_await_time_ms=100).close()
    except (OperationFailure, NotImplementedError, TypeError, AttributeError) as exc:
        return Finding("change streams", f"unavailable ({scrub(str(exc))[:80]}); polling only")
    return Finding("change streams", "available: one per scheduler wakes its workers")


def _claim_round_trip(tasks: Any) -> Finding:
    samples = []
    update = claim_update("party-check", system_now())
    for _ in range(CLAIM_SAMPLES):
        started = time.perf_counter()
        # Matches no task (a fresh id): the full path of a claim, writing nothing.
        tasks.find_one_and_update(
            {"_id": ObjectId(), "status": "queued"}, update, return_document=ReturnDocument.AFTER
        )
        samples.append((time.perf_counter() - started) * 1000)
    median = statistics.median(samples)
    text = f"{median:.1f} ms (median of {CLAIM_SAMPLES})"
    if median > SLOW_CLAIM_MS:
        return Finding("claim round trip", text, warning="a claim costs a few round trips: "
                       "run schedulers near the primary")  # fmt: skip
    return Finding("claim round trip", text)
