"""The store contract: what every backend must do, atomically, and in what order.

A store persists ``model.Task`` records and knows nothing of handlers, HTTP or processes: rules such
as attempts, retries and recurrence live in ``queue``, which expresses them as conditional writes.
Imports only ``model``, ``errors`` and ``timestamps``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..errors import Conflict
from ..model import ALL_STATUSES, Status, Task, Write
from .wakeup import Listener

#: Paging cursor: the queue-order key of the last task of the previous page.
OrderKey = tuple[datetime, int, datetime, str]


class Closeable(Protocol):
    def close(self) -> None: ...


@dataclass
class Finding:
    """One line of ``party check``: what was looked at and what was found; ``problem`` (with its
    fix) when it must be fixed before going live (``party check`` then exits non-zero),
    ``warning`` when it works but is not what production wants."""

    name: str
    value: str
    problem: str | None = None
    warning: str | None = None


@dataclass(frozen=True)
class KeyRecord:
    """What a store keeps of an add under an idempotency key: the digest of the request it
    answered, when, and the answer (None while that add is in progress, on a store that keeps
    a reservation before the tasks)."""

    digest: str
    created: datetime
    answer: bytes | None


@dataclass(frozen=True)
class KeyedAdd:
    """An add under an idempotency key (``insert_many(..., key=)``): ``key`` is held by at most
    one record (a unique index); a record created before ``expired_before`` counts as gone;
    ``answer(tasks)`` builds the bytes kept for repeats from the tasks as stored."""

    key: str
    digest: str
    created: datetime
    expired_before: datetime
    answer: Callable[[list[Task]], bytes]


class KeyTaken(Exception):
    """``insert_many(..., key=)`` found ``record`` under the key: nothing was added."""

    def __init__(self, record: KeyRecord) -> None:
        super().__init__("idempotency key already used")
        self.record = record


#: Statuses retention prunes (the ended ones); queued and running tasks are never pruned.
PRUNABLE = (Status.COMPLETED, Status.FAILED, Status.DELETED)


class Store(ABC):
    """Abstract task store. Every method may raise ``StoreUnavailable``.

    Queue order is ``timestamp, attempts, created, id`` ascending. A task is *due* when its status
    is ``queued`` and both its ``timestamp`` and its ``run_at`` are at or before ``now``.
    """

    #: Timestamps are stored at this precision (microseconds); finer input is rounded up.
    precision_micros: int = 1
    #: A write is local and short once the store's locks are had (an embedded file): a server
    #: may run a small one on its event loop when ``lock_wait(0)`` finds the locks free.
    inline_writes: bool = False

    def relax_commits(self) -> None:  # noqa: B027 - optional hook
        """This connection only claims, renews and records outcomes (a worker's): a power cut may
        lose its last commits (the runs then happen again, at least once) but never an add that
        was acknowledged, so a store may commit them without waiting for the disk."""

    @contextmanager
    def lock_wait(self, seconds: float) -> Iterator[None]:
        """Within this block, this thread's calls wait at most ``seconds`` for the locks they need
        (the connection, the writers' lock), then raise ``StoreBusy`` having written nothing. A
        store without locks of its own (one whose calls time out by themselves) ignores it."""
        yield

    @classmethod
    def from_url(cls, url: str) -> Store:
        """Open the store ``url`` names; ``open_store`` has checked that it names this backend."""
        raise NotImplementedError

    @abstractmethod
    def insert_many(self, tasks: Sequence[Task], key: KeyedAdd | None = None) -> list[Task]:
        """Insert all of ``tasks`` or none of them; return them as stored, in the same order.

        Raises ``Conflict`` (with ``index`` of the first clashing task) when a ``singleton`` key is
        already held by a stored task or repeated within the batch; nothing is then left inserted.
        With ``key``, the key's record is created with the tasks (a unique index: of two adds
        under one key, one adds, the other raises ``KeyTaken`` with the record it found, having
        added nothing); a record older than ``key.expired_before`` is replaced.
        """

    def key_record(self, key: str) -> KeyRecord | None:
        """The record kept under an idempotency key, or None (a read; no lock)."""
        return None

    def prune(self, statuses: Sequence[Status], before: datetime, limit: int) -> int:
        """Remove up to ``limit`` tasks of ``statuses`` (ended ones only, ``PRUNABLE``) that ended
        before ``before`` (``completed_on``, else ``created``), in one short write; add them to
        the store's ``pruned`` counter in the same write; return how many went."""
        return 0

    def prune_keys(self, before: datetime, limit: int) -> int:
        """Remove up to ``limit`` idempotency key records created before ``before``."""
        return 0

    @abstractmethod
    def get(self, task_id: str) -> Task | None:
        """The task with this id, or None."""

    @abstractmethod
    def query(
        self,
        *,
        status: Status | None = None,
        party: str | None = None,
        limit: int = 100,
        after: OrderKey | None = None,
    ) -> list[Task]:
        """Up to ``limit`` tasks in queue order, filtered by status and party, after ``after``."""

    @abstractmethod
    def claim(
        self,
        limit: int,
        now: datetime,
        lease_expires: datetime,
        token: str,
        limits: Mapping[str, int] | None = None,
    ) -> list[Task]:
        """Atomically take up to ``limit`` due tasks, in queue order, and return them claimed.

        Each taken task becomes ``running`` with ``attempts`` + 1, ``lease`` = ``token`` and
        ``lease_expires`` set. A task is taken by at most one caller however many race for it.
        ``limits`` (``{party: n}``) caps the running tasks of those parties, across every caller:
        a due task of a party at its cap is passed over (the tasks behind it are taken in its
        stead, in order) and the cap holds however many claimers race.
        """

    @abstractmethod
    def claim_id(self, task_id: str, lease_expires: datetime, token: str) -> Task | None:
        """Claim one task by id, due or not, as ``claim`` would; None unless it is ``queued``."""

    @abstractmethod
    def update(self, write: Write) -> Task | None:
        """Apply one conditional write atomically; return the task after it, or None if the id,
        lease token or status did not match (nothing is then written)."""

    @abstractmethod
    def write_many(self, writes: Sequence[Write]) -> list[bool]:
        """Apply conditional writes, each atomically on its own task; return which ones matched.

        A store that can (SQLite) applies them in one transaction, for speed.
        """

    @abstractmethod
    def expired(self, now: datetime, limit: int = 100) -> list[Task]:
        """``running`` tasks whose lease expired before ``now``, oldest lease first."""

    @abstractmethod
    def next_run_at(self, exclude: Collection[str] = ()) -> datetime | None:
        """The earliest time at which a queued task becomes due, or None when none is queued;
        the tasks of the handlers named in ``exclude`` are left out (those a scheduler cannot run:
        it sleeps until one it can run is due, instead of waking for them again and again)."""

    @abstractmethod
    def stats(self, now: datetime) -> dict[str, Any]:
        """Counts: ``{"statuses": {status: n}, "parties": {party: {status: n}}, "due": n,
        "oldest_due": datetime | None, "pruned": n}``; every status appears in ``statuses``;
        ``pruned`` counts the tasks ``prune`` removed since the store was created."""

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers; raise ``StoreUnavailable`` otherwise."""

    @abstractmethod
    def beat(self, record: dict[str, Any], now: datetime) -> None:
        """Write a scheduler's heartbeat: upsert ``record`` (a JSON object) under
        ``record["id"]`` with ``now`` as its last beat. Records of stopped or dead schedulers stay
        (their run counters still count) until ``forget_schedulers`` removes them."""

    @abstractmethod
    def schedulers(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """The heartbeat records whose last beat is at or after ``since`` (every record when
        None), each with its ``heartbeat`` time, oldest start first."""

    @abstractmethod
    def forget_schedulers(self, before: datetime) -> int:
        """Remove the records whose last beat is before ``before``; return how many."""

    @abstractmethod
    def check_writable(self) -> None:
        """Return when the store can take a write right now; else raise ``StoreUnavailable``
        whose message says why for a person (read-only, full, corrupt, unreachable, or the write
        lock not had within about a second).

        It commits a tiny write of its own (never a task), so it proves more than ``ping``; it
        gives up after about a second, and costs about one small commit: a caller polling it
        (``GET /health``) caches the answer for about a second.
        """

    def listen(self) -> Listener | None:
        """A wake-up listener for a scheduler: its ``fileno()`` becomes readable when a task was
        queued (added, re-queued, retried or handed back) by any process; None when this store
        has no channel (then polling alone finds new tasks)."""
        return None

    def relay_wakeups(self) -> Closeable | None:
        """Called once by a scheduler's main process: start whatever brings wake-ups from other
        machines to this machine's listeners (MongoDB: one change stream per scheduler, fanned
        out to its workers through the local channel), and return it to be closed, or None when
        this store has nothing of the kind. ``close()`` of the store stops it too."""
        return None

    def describe(self) -> list[Finding]:
        """What an operator checks before going live (``party check``): one ``Finding`` per
        aspect of the deployment (version, topology, indexes, durability, round trips), those
        that need fixing with ``problem`` set. Raises ``StoreUnavailable`` when the store does
        not answer."""
        return []

    def notify(self) -> None:  # noqa: B027 - optional hook
        """Wake the listeners after a task was queued. Stores call it themselves after such a
        commit; it never raises and costs a few microseconds."""

    def maintain(self) -> None:  # noqa: B027 - optional hook
        """Housekeeping a long-running process (the scheduler) calls now and then, so that it
        happens off the path of adds and runs. Cheap when there is nothing to do; never raises
        for a store that stopped answering (the next call tries again)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store is not used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assemble_stats(
    groups: Iterable[tuple[str, str, int]], due: int, oldest_due: datetime | None, pruned: int = 0
) -> dict[str, Any]:
    """The ``stats`` answer from (party, status, count) rows: every status appears."""
    statuses = dict.fromkeys(ALL_STATUSES, 0)
    parties: dict[str, dict[str, int]] = {}
    for party, status, count in groups:
        statuses[status] = statuses.get(status, 0) + count
        parties.setdefault(party, {})[status] = count
    return {
        "statuses": statuses, "parties": parties, "due": due, "oldest_due": oldest_due,
        "pruned": pruned,
    }  # fmt: skip


def check_batch_singletons(tasks: Sequence[Task]) -> None:
    """Raise ``Conflict`` when two tasks of one batch hold the same singleton key."""
    seen: set[str] = set()
    for index, task in enumerate(tasks):
        if task.singleton is not None:
            if task.singleton in seen:
                raise singleton_conflict(task, index)
            seen.add(task.singleton)


def singleton_conflict(task: Task, index: int | None = None) -> Conflict:
    """The error of a second live recurring task with the same (party, data)."""
    return Conflict(
        f"a recurring {task.party} task with the same data is already queued or running; "
        "only one may exist at a time (delete it first, or change its data)",
        index=index,
    )
