"""Party: a job-queue daemon. Tasks arrive over HTTP and run in a post-fork worker pool.

The public API is what handler modules and applications need; importing it loads neither tornado,
pymongo nor a store: ``open`` imports the store it opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TaskException
from .handler import TaskBase, on_worker_start, on_worker_stop
from .timestamps import system_now

if TYPE_CHECKING:
    from .local import LocalQueue

__version__ = "0.1.0"

__all__ = [
    "TaskBase",
    "TaskException",
    "on_worker_start",
    "on_worker_stop",
    "open",
    "system_now",
    "__version__",
]


def open(store: str | None = None) -> LocalQueue:  # noqa: A001 - the contract's name
    """A handle that adds tasks in this process, without the server, under the rules of
    ``POST /tasks``: ``add``, ``add_many``, ``get``, ``delete``, ``close`` (and ``with``).

    ``store`` is a store URL (default ``PARTY_STORE``, else ``sqlite:///party.db``); items are
    checked against the handlers of ``party/tasks/`` and ``PARTY_TASKS``. Safe from several
    threads and across a fork. See ``party.local``.
    """
    from .local import open_queue

    return open_queue(store)
