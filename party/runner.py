"""Run one claimed task: build its handler, call ``run`` and ``on_complete``, return the outcome.

Used by pool workers and by the server's force-run. Timeouts are enforced by the pool, which can
kill a process; the runner itself never sleeps or forks. Imports ``handler``, ``registry``,
``model``, ``queue`` and ``timestamps``.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from .handler import FollowUps
from .model import Outcome, Status, Task
from .queue import TaskQueue, error_info
from .registry import Registry
from .storable import MAX_BSON_BYTES, Unstorable, document_size, value_size
from .timestamps import system_now

logger = logging.getLogger(__name__)


def run_task(task: Task, registry: Registry) -> Outcome:
    """Run ``task`` with its registered handler and describe what happened; never raises
    (but for KeyboardInterrupt and SystemExit)."""
    started = system_now()
    handler_cls = registry.get(task.party)
    if handler_cls is None:
        known = ", ".join(registry.names) or "none"
        message = f"no handler named {task.party!r} is registered here (known: {known})"
        return Outcome(
            task,
            ok=False,
            started_on=started,
            finished_on=system_now(),
            error=error_info("UnknownHandler", message, at=started),
            permanent=True,
        )
    try:
        handler = handler_cls(task)
        result = _jsonable(handler.run(), task)
        follow_ups = FollowUps()
        problem = _unstorable(result, task)
        if problem is not None:
            finished = system_now()
            return Outcome(
                task,
                ok=False,
                started_on=started,
                finished_on=finished,
                error=error_info("UnstorableResult", problem, at=finished),
                permanent=True,  # the same result would come back: no retry
            )
        handler.on_complete(follow_ups)
    except Exception as exc:
        finished = system_now()
        return Outcome(
            task,
            ok=False,
            started_on=started,
            finished_on=finished,
            error=error_info(type(exc).__name__, str(exc), traceback.format_exc(), at=finished),
        )
    return Outcome(
        task,
        ok=True,
        started_on=started,
        finished_on=system_now(),
        result=result,
        next_run=handler._next_run,
        follow_ups=follow_ups.added,
    )


def execute(queue: TaskQueue, task: Task) -> tuple[Outcome, Status | None]:
    """Run a claimed task and record its outcome through the queue (fenced by its lease)."""
    outcome = run_task(task, queue.registry)
    return outcome, queue.record([outcome])[0]


#: Results that are JSON as they are: checked by type, without encoding them.
_PLAIN = frozenset({type(None), bool, int, str})


def _jsonable(result: Any, task: Task) -> Any:
    if type(result) in _PLAIN:
        return result
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        logger.warning(
            "result of task %s (%s) is not JSON; its repr() is kept instead", task.id, task.party
        )
        return repr(result)
    return result


#: A result this small always fits beside data within the limit (MongoDB's is 16 MiB a document,
#: data at most 15 MiB): the task's data is measured only for a larger one.
_SMALL_RESULT = 512 * 1024


def _unstorable(result: Any, task: Task) -> str | None:
    """Why ``result`` cannot be kept beside the task's data on every store, or None."""
    if result is None or type(result) is bool:
        return None
    try:
        size = value_size(result)
        if size > _SMALL_RESULT:
            size += document_size(task.data)
    except Unstorable as exc:
        return (
            f"the result of {task.party}.run() cannot be stored: {exc.where('result')}: {exc}; "
            "return JSON values (64-bit integers, valid Unicode, keys without NUL or a leading "
            "'$', at most 100 levels)"
        )
    if size > MAX_BSON_BYTES:
        return (
            f"the result of {task.party}.run() cannot be stored: with the task's data it takes "
            f"{size} bytes as BSON, over the limit of {MAX_BSON_BYTES} (15 MiB); keep large "
            "results elsewhere and return a reference"
        )
    return None
