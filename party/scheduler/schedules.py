"""The ensure-schedules pass: each declared schedule of the loaded handlers has one live task.

At a scheduler's start and then every ``ENSURE_EVERY`` seconds, for each handler it loaded:

- declared and without a live task: add one at the first slot, marked with the declaration's text
  (``Task.schedule``), through the recurring singleton: the store's unique index lets one add win
  whatever the number of schedulers, and the losers' ``Conflict`` is expected;
- declared, with a queued task marked with another text (the declaration changed in code): move it
  to the new next slot; a marked task of other data (``schedule_data`` changed) is deleted;
- not declared: delete the queued tasks a declaration created (marked), and only those.

A scheduler that has not loaded a handler never touches its tasks. When another live scheduler that
started later declares a handler differently (a rolling deploy), this one leaves that handler to it
and logs the conflict once: the most recently started wins. Imports ``queue``, ``model``,
``schedule``, ``errors``, ``timestamps`` and the heartbeat's record; the loop calls ``tick``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ..errors import Conflict, TaskException
from ..model import NewTask, Status, Task, canonical_json, singleton_key
from ..queue import TaskQueue
from ..schedule import Declaration
from ..stores.base import OrderKey
from ..timestamps import format_timestamp, system_now
from .heartbeat import BEAT_EVERY, Heartbeat

logger = logging.getLogger(__name__)

#: Seconds between two passes (PRODUCT.md: at least every minute).
ENSURE_EVERY = 30.0
#: Seconds between two looks for the marked tasks of handlers whose declaration was removed.
REMOVED_EVERY = 600.0
_PAGE = 1000


class Schedules:
    """Keeps the declared schedules of one scheduler's handlers, one pass at a time.

    ``declared`` maps every handler the scheduler loaded to its declaration (None when it declares
    none): ``Registry.declarations()``, checked at start. ``heartbeat`` (optional) carries the
    declarations to the store, where the server reads them (``GET /schedules``) and other
    schedulers see a rolling deploy's conflicts.
    """

    def __init__(
        self,
        queue: TaskQueue,
        declared: Mapping[str, Declaration | None],
        *,
        heartbeat: Heartbeat | None = None,
        clock: Callable[[], datetime] = system_now,
        every: float = ENSURE_EVERY,
    ) -> None:
        self.queue = queue
        self.declared = dict(declared)
        self.heartbeat = heartbeat
        self.clock = clock
        self.every = timedelta(seconds=every)
        self.next_pass: datetime | None = None
        self._next_removed: datetime | None = None
        self._conflicts: set[tuple[str, str]] = set()
        if heartbeat is not None:
            heartbeat.schedules = {
                name: decl.record() for name, decl in self.declared.items() if decl is not None
            }

    def due(self, now: datetime) -> bool:
        """Whether a pass is due at ``now``."""
        return self.next_pass is None or now >= self.next_pass

    def tick(self, now: datetime | None = None) -> int:
        """One pass; returns the number of tasks added, moved or deleted. A store that does not
        answer raises ``StoreUnavailable`` (the loop retries)."""
        now = now or self.clock()
        self.next_pass = now + self.every
        records = self._live_records(now)
        look_removed = self._next_removed is None or now >= self._next_removed
        ever_declared: set[str] = set()
        if look_removed:
            self._next_removed = now + timedelta(seconds=REMOVED_EVERY)
            ever_declared = self._ever_declared()
        changes = 0
        for party, decl in sorted(self.declared.items()):
            if decl is None and not (look_removed and party in ever_declared):
                continue
            if self._newer_disagrees(party, decl, records):
                continue
            try:
                changes += self._ensure(party, decl, now)
            except Conflict:
                pass  # another scheduler added it between our look and our add
            except TaskException as exc:
                logger.error("schedule of %s: %s", party, exc)
        return changes

    # -- one handler -------------------------------------------------------------------------

    def _ensure(self, party: str, decl: Declaration | None, now: datetime) -> int:
        marked = self._marked(party, with_running=decl is not None)
        changes = 0
        key = None if decl is None else singleton_key(party, decl.data)
        current = None
        for task in marked:
            if task.singleton == key and key is not None:
                current = task
            elif task.status == Status.QUEUED and self.queue.discard(task.id) is not None:
                why = "removed from" if decl is None else "changed data in"
                logger.info("schedule %s of %s %s code: deleted its queued task %s",
                            task.schedule, party, why, task.id)  # fmt: skip
                changes += 1
        if decl is None:
            return changes
        if current is None:
            when = decl.first(now)
            new = NewTask(party, dict(decl.data), when, schedule=decl.text)
            try:
                (task,) = self.queue.add([new])
            except Conflict:
                # Another scheduler won the add, or a task of the same data was added by hand
                # (not marked: left alone, and it is the one live task of this singleton).
                return changes
            logger.info("schedule %s of %s: queued task %s for %s", decl.text, party, task.id,
                        when.isoformat())  # fmt: skip
            return changes + 1
        if current.schedule != decl.text and current.status == Status.QUEUED:
            when = decl.moved(current.last_run_on, now)
            if self.queue.reschedule(current.id, when, schedule=decl.text) is not None:
                logger.info("schedule of %s changed from %s to %s: task %s moved to %s", party,
                            current.schedule, decl.text, current.id, when.isoformat())  # fmt: skip
                changes += 1
        return changes

    def _marked(self, party: str, *, with_running: bool) -> list[Task]:
        """The live tasks of ``party`` that a declaration created."""
        found: list[Task] = []
        statuses = (Status.QUEUED, Status.RUNNING) if with_running else (Status.QUEUED,)
        for status in statuses:
            after: OrderKey | None = None
            while True:
                page = self.queue.list(status=status, party=party, limit=_PAGE, after=after)
                found.extend(task for task in page if task.schedule is not None)
                if len(page) < _PAGE:
                    break
                after = page[-1].order_key
        return found

    # -- other schedulers --------------------------------------------------------------------

    def _live_records(self, now: datetime) -> list[dict[str, Any]]:
        """The heartbeat records of the other live schedulers (not stopped, beating)."""
        if self.heartbeat is None:
            return []
        live = []
        for record in self.queue.store.schedulers(now - timedelta(seconds=60)):
            every = float(record.get("beat_every") or BEAT_EVERY)
            if record.get("stopped") or record["id"] == self.heartbeat.id:
                continue
            if record["heartbeat"] >= now - timedelta(seconds=3 * every):
                live.append(record)
        return live

    def _ever_declared(self) -> set[str]:
        """Handlers some scheduler record of the store (live or past) declares: the only ones
        whose marked tasks may outlive a removed declaration. Without a heartbeat, all."""
        if self.heartbeat is None:
            return set(self.declared)
        names: set[str] = set()
        for record in self.queue.store.schedulers():
            names.update((record.get("schedules") or {}).keys())
        return names

    def _newer_disagrees(
        self, party: str, decl: Declaration | None, records: list[dict[str, Any]]
    ) -> bool:
        """True when a live scheduler started after this one loaded ``party`` and declares it
        otherwise (logged once per scheduler and handler)."""
        if self.heartbeat is None:
            return False
        mine = _identity(None if decl is None else decl.record())
        me = (format_timestamp(self.heartbeat.started) or "", self.heartbeat.id)
        for record in records:
            if party not in (record.get("handlers") or ()):
                continue
            theirs = _identity((record.get("schedules") or {}).get(party))
            if theirs == mine or (str(record.get("started")), record["id"]) <= me:
                continue
            if (party, record["id"]) not in self._conflicts:
                self._conflicts.add((party, record["id"]))
                logger.warning(
                    "schedule conflict for %s: scheduler %s on %s (started %s, later than this "
                    "one) declares %s, this one %s; the later one wins, this one leaves it alone",
                    party, record["id"], record.get("host"), record.get("started"),
                    theirs[0] or "no schedule", mine[0] or "no schedule",
                )  # fmt: skip
            return True
        return False


def _identity(entry: Mapping[str, Any] | None) -> tuple[str | None, str]:
    if not entry:
        return (None, "")
    return (entry.get("text"), canonical_json(entry.get("data") or {}))
