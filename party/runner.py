"""Run one claimed task: build its handler, call ``run`` and ``on_complete``, return the outcome.

Used by pool workers and by the server's force-run. ``async def`` handlers run either to their end
on the calling thread's own loop (``run_task``) or awaited on a running one (``run_task_async``,
a worker that runs many at once). Timeouts are enforced by the pool (it kills a process or cancels
a run); the runner itself never sleeps or forks. A handler may fork: its child, should it come
back into the runner (returning, raising or calling ``sys.exit``), ends there and never reaches
the worker's loop, leases or records. Also ``run_hooks``, for the worker hooks.
Imports ``handler``, ``registry``, ``model``, ``queue`` and ``timestamps``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .handler import FollowUps, TaskBase
from .model import Outcome, Status, Task
from .queue import TaskQueue, error_info
from .registry import Registry
from .storable import MAX_BSON_BYTES, Unstorable, document_size, value_size
from .timestamps import system_now

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger(__name__)

# Forks of this process, counted in the child: a run that sees the count change is in a child
# its handler forked. Counted, not os.getpid(): no system call per run.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def run_task(task: Task, registry: Registry) -> Outcome:
    """Run ``task`` with its registered handler and describe what happened; never raises
    (but for KeyboardInterrupt and SystemExit). An ``async def`` run or ``on_complete`` is driven
    to its end on this thread's event loop (``worker_loop``)."""
    forks = _forks
    try:
        outcome = _run_task(task, registry)
    except BaseException:
        if _forks != forks:
            _end_forked_child()
        raise
    if _forks != forks:
        _end_forked_child(outcome)
    return outcome


def _end_forked_child(outcome: Outcome | None = None) -> None:
    """End a child the handler forked that came back into the runner: with the exit status it
    would have had (``sys.exit``'s code, 1 for another exception, else 0 when its run succeeded),
    without running the worker's code above (its loop, leases, records, exit handlers)."""
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 1 if exc is not None or (outcome is not None and not outcome.ok) else 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say
            pass
    os._exit(code)


def _run_task(task: Task, registry: Registry) -> Outcome:
    started = system_now()
    handler_cls = registry.get(task.party)
    if handler_cls is None:
        return _unknown(task, registry, started)
    try:
        handler = handler_cls(task)
        result = handler.run()
        if result is not None:  # None, the most common result, needs none of these checks
            if _awaitable(result):
                result = worker_loop().run_until_complete(_await(result))
            result = _jsonable(result, task)
            problem = _unstorable(result, task)
            if problem is not None:
                return _unstorable_outcome(task, started, problem)
        follow_ups = FollowUps()
        done = handler.on_complete(follow_ups)
        if done is not None and _awaitable(done):
            worker_loop().run_until_complete(_await(done))
    except Exception as exc:
        return _failed(task, started, exc)
    return _completed(task, started, handler, result, follow_ups)


async def run_task_async(task: Task, registry: Registry) -> Outcome:
    """``run_task`` for a handler whose ``run`` is ``async def``, awaited on the running loop
    (a worker that runs many at once); a cancellation (its timeout) propagates."""
    started = system_now()
    handler_cls = registry.get(task.party)
    if handler_cls is None:
        return _unknown(task, registry, started)
    try:
        handler = handler_cls(task)
        result = handler.run()
        if inspect.isawaitable(result):
            result = await result
        result = _jsonable(result, task)
        problem = _unstorable(result, task)
        if problem is not None:
            return _unstorable_outcome(task, started, problem)
        follow_ups = FollowUps()
        done = handler.on_complete(follow_ups)
        if inspect.isawaitable(done):
            await done
    except Exception as exc:
        return _failed(task, started, exc)
    return _completed(task, started, handler, result, follow_ups)


def is_async(handler_cls: type[TaskBase] | None) -> bool:
    """Whether the handler's ``run`` is ``async def`` (it then runs on a worker's event loop)."""
    if handler_cls is None:
        return False
    flag = _ASYNC.get(handler_cls)
    if flag is None:
        flag = _ASYNC[handler_cls] = inspect.iscoroutinefunction(handler_cls.run)
    return flag


_ASYNC: dict[type, bool] = {}
_local = threading.local()


def worker_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, made once and kept: the loop async handlers and async worker
    hooks run on (a client a start hook opens stays bound to the loop the handlers use)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        import asyncio  # here: a worker without async handlers never pays for the import

        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _awaitable(value: Any) -> bool:
    # The plain results of most runs are told apart by type, without the ABC check.
    return type(value) not in _PLAIN and inspect.isawaitable(value)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_hooks(hooks: list[Callable[[], Any]]) -> None:
    """Call worker hooks in order (an async one on ``worker_loop``); the first that raises
    stops the rest and propagates."""
    for hook in hooks:
        done = hook()
        if inspect.isawaitable(done):
            worker_loop().run_until_complete(_await(done))


def _unknown(task: Task, registry: Registry, started: datetime) -> Outcome:
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


def _unstorable_outcome(task: Task, started: datetime, problem: str) -> Outcome:
    finished = system_now()
    return Outcome(
        task,
        ok=False,
        started_on=started,
        finished_on=finished,
        error=error_info("UnstorableResult", problem, at=finished),
        permanent=True,  # the same result would come back: no retry
    )


def _failed(task: Task, started: datetime, exc: Exception) -> Outcome:
    finished = system_now()
    return Outcome(
        task,
        ok=False,
        started_on=started,
        finished_on=finished,
        error=error_info(type(exc).__name__, str(exc), traceback.format_exc(), at=finished),
    )


def _completed(
    task: Task, started: datetime, handler: TaskBase, result: Any, follow_ups: FollowUps
) -> Outcome:
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
