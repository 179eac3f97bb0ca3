"""How the Mongo store talks to MongoDB: client options, the connection, the errors it turns into
Party's, and the indexes it expects.

- Options: Party's defaults (a 5 s server selection, a 10 s operation timeout) unless the URL sets
  them; writes acknowledged by the majority, reads from the primary whatever the URL says.
- Errors: anything meaning "the deployment cannot answer now" (a dropped connection, a step-down,
  a shutdown, a timeout, a write concern not met, a lost cursor) becomes ``StoreUnavailable``; a
  document BSON cannot hold becomes ``ValidationError``. Nothing else of pymongo's leaks upward
  but a bug.
- Indexes: one table (``INDEXES``) compared with what the collection holds, so that a clash (the
  same keys under another name, other options under the same name) stops the process with the
  index named, instead of failing with a raw code 85/86 in every worker.
- Connecting: ``connect`` gives the client and the tasks collection of a URL without a round trip
  (``mongomock://`` for tests).

With ``mongo`` and the other ``mongo_*`` modules, the only ones that import pymongo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_plus

from bson.errors import InvalidDocument
from pymongo import MongoClient, ReadPreference, WriteConcern
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    CursorNotFound,
    DocumentTooLarge,
    DuplicateKeyError,
    InvalidURI,
    PyMongoError,
    WriteConcernError,
)

from ..errors import ConfigError, StoreUnavailable, ValidationError
from .mongo_codec import ORDER

#: Client options Party sets unless the URL (or the caller) sets them. ``timeoutMS`` bounds every
#: operation, retries included (a majority write with a secondary down would otherwise block for
#: ever). Naive datetimes (UTC) are what the rest of Party handles, so ``tz_aware`` is not one a
#: URL can change.
DEFAULTS: dict[str, Any] = {"serverSelectionTimeoutMS": 5000, "timeoutMS": 10000}

#: Server error codes that mean the deployment cannot serve now (not that the request is wrong):
#: HostUnreachable, HostNotFound, MaxTimeMSExpired, WriteConcernFailed (wtimeout), NetworkTimeout,
#: ShutdownInProgress, PrimarySteppedDown, ExceededTimeLimit, SocketException, NotWritablePrimary,
#: InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
#: NotPrimaryOrSecondary, LockTimeout, CursorNotFound.
UNAVAILABLE_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 24, 43}
)

_Keys = list[tuple[str, int]]
#: The indexes the store's queries rely on: name -> (keys, options).
INDEXES: dict[str, tuple[_Keys, dict[str, Any]]] = {
    # Listings by status, and without a status (the five statuses as an $in: the server merges
    # their ranges in order instead of sorting), the due count of /stats.
    "tasks_order": ([("status", 1), *ORDER], {}),
    # Listings of one handler (with or without a status, merged the same way) and /stats' counts
    # per (party, status), read from the index alone.
    "tasks_party": ([("party", 1), ("status", 1), *ORDER], {}),
    # The claim: queued tasks not waiting out a retry delay, in queue order (mongo_codec.READY).
    "tasks_ready": (ORDER, {"partialFilterExpression": {"status": "queued", "ready": True}}),
    # The queued tasks waiting out a retry delay, by the end of their delay.
    "tasks_delayed": (
        [("run_at", 1), ("_id", 1)],  # not tasks_run_at's keys: one key pattern, one index
        {"partialFilterExpression": {"status": "queued", "ready": False}},
    ),
    # The next time a queued task becomes due.
    "tasks_run_at": ([("run_at", 1)], {"partialFilterExpression": {"status": "queued"}}),
    # Expired leases.
    "tasks_lease": ([("lease_expires", 1)], {"partialFilterExpression": {"status": "running"}}),
    # Retention: the ended tasks by their end (those deleted before a run go by tasks_order).
    "tasks_ended": (
        [("status", 1), ("completed_on", 1)],
        {"partialFilterExpression": {"completed_on": {"$exists": True}}},
    ),
    # max_running: a running task of a capped handler holds one of its slots ("<party>#<n>"),
    # at most one task per slot; a task that stops running leaves the index with its status.
    "tasks_slot": (
        [("slot", 1)],
        {
            "unique": True,
            "partialFilterExpression": {"status": "running", "slot": {"$exists": True}},
        },
    ),
    # At most one live recurring task per (party, data).
    "tasks_singleton": (
        [("singleton", 1)],
        {"unique": True, "partialFilterExpression": {"singleton": {"$exists": True}}},
    ),
}
_COMPARED_OPTIONS = ("unique", "partialFilterExpression", "sparse", "expireAfterSeconds")


def client_options_for(url: str, **given: Any) -> dict[str, Any]:
    """The keyword options ``MongoClient(url, ...)`` gets: ``given``, then ``DEFAULTS``, leaving
    out any option the URL sets itself (pymongo lets a keyword override the URL)."""
    query = url.partition("?")[2]
    pairs = [part.split("=", 1) for part in re.split("[&;]", query) if part]
    in_url = {pair[0].lower(): pair[-1] for pair in pairs}
    options = {name: value for name, value in given.items() if name.lower() not in in_url}
    for name, value in DEFAULTS.items():
        if name.lower() not in in_url:
            options.setdefault(name, value)
    # Once timeoutMS is set pymongo bounds server selection by it alone: a URL that chose its
    # serverSelectionTimeoutMS (and no timeoutMS) keeps that bound, as the operation timeout.
    selection = in_url.get("serverselectiontimeoutms")
    if "timeoutms" not in in_url and "timeoutMS" not in given and selection:
        try:
            options["timeoutMS"] = int(float(selection))
        except ValueError:
            pass  # pymongo names the bad value
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


def remember_secret(url: str) -> None:
    """Note the password of ``url``, to be hidden from every message."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    if password:
        _SECRETS.update({password, unquote_plus(password)})


def scrub(text: str) -> str:
    """``text`` without any password this process knows."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


def shown(exc: BaseException) -> BaseException | None:
    """``exc`` as the cause of an error of ours, unless its text holds a password (a traceback
    would print it): then no cause."""
    text = str(exc)
    return exc if scrub(text) == text else None


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the deployment cannot serve now: retrying later may succeed."""
    if isinstance(exc, ConnectionFailure | CursorNotFound | WriteConcernError):
        return True
    if isinstance(exc, PyMongoError):
        if exc.has_error_label("RetryableWriteError") or exc.timeout:
            return True
        if getattr(exc, "code", None) in UNAVAILABLE_CODES:
            return True
        if isinstance(exc, BulkWriteError):
            concern = exc.details.get("writeConcernErrors") or []
            return bool(concern) and not exc.details.get("writeErrors")
    return False


@contextmanager
def guard() -> Iterator[None]:
    """Turn pymongo's errors into Party's (see the module docstring). Duplicate keys and bulk
    write errors that are about the documents pass through, for the caller to read."""
    try:
        yield
    except DuplicateKeyError:
        raise
    except (DocumentTooLarge, InvalidDocument, OverflowError) as exc:
        raise ValidationError(f"a task cannot be stored in MongoDB: {scrub(str(exc))}") from None
    except PyMongoError as exc:
        if is_unavailable(exc):
            what = "did not answer" if isinstance(exc, ConnectionFailure) else "cannot serve now"
            raise StoreUnavailable(f"MongoDB {what}: {scrub(str(exc))}") from shown(exc)
        raise


def _normal_keys(keys: Any) -> list[tuple[str, int]]:
    pairs = keys.items() if isinstance(keys, dict) else keys
    return [(name, int(direction)) for name, direction in pairs]


def index_problems(present: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Compare ``index_information()`` with ``INDEXES``: (names of the missing indexes, problems
    that stop the store, each naming the index and the fix)."""
    missing: list[str] = []
    problems: list[str] = []
    by_keys = {
        (tuple(_normal_keys(info["key"])), _canonical(info.get("partialFilterExpression"))): name
        for name, info in present.items()
    }
    for name, (keys, options) in INDEXES.items():
        info = present.get(name)
        if info is None:
            other = by_keys.get((tuple(keys), _canonical(options.get("partialFilterExpression"))))
            if other is not None:
                problems.append(
                    f"index {other!r} has the keys Party's {name!r} needs, under another name "
                    f"(MongoDB refuses a second one): drop it (db.tasks.dropIndex({other!r})) "
                    "and start again"
                )
            else:
                missing.append(name)
            continue
        differs = _normal_keys(info["key"]) != keys or any(
            info.get(option) != options.get(option)
            for option in _COMPARED_OPTIONS
            if option in info or option in options
        )
        if differs:
            problems.append(
                f"index {name!r} exists with other keys or options than Party's "
                f"({_normal_keys(info['key'])} {_options_of(info)}; expected {keys} {options}): "
                f"drop it (db.tasks.dropIndex({name!r})) and start again"
            )
    return missing, problems


def _canonical(value: Any) -> str:
    """One text for equal filters, whatever their mapping type (a server answers SON)."""
    return json.dumps(value, sort_keys=True, default=str)


def _options_of(info: dict[str, Any]) -> dict[str, Any]:
    return {option: info[option] for option in _COMPARED_OPTIONS if option in info}


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
