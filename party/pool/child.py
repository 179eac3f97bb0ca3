"""The entry of a freshly forked worker process: signals, store, hooks, then the worker's loop.

Also the exit codes a worker may end with, and how its pool reaps it and names the reason. Imports
the package's ``worker`` and ``owner``, and ``runner``, ``registry``, ``channel`` and ``errors``.
"""

from __future__ import annotations

import logging
import os
import signal

from ..channel import Channel
from ..errors import StoreUnavailable
from ..registry import Registry
from ..runner import run_hooks
from . import owner
from .claiming import ClaimPolicy
from .leases import LEASE_LOST_EXIT
from .slot import Slot
from .worker import Worker

logger = logging.getLogger("party.pool.worker")

#: Signals a worker ignores; the pool blocks them around the fork so none lands before that.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: Exit code of a worker that could not open its store.
NO_STORE_EXIT = 3
#: Exit code of a worker that ended after a run in one of its threads overran its timeout (the
#: thread cannot be stopped): its other runs ended first; the pool replaces it at once.
RETIRED_EXIT = 5
#: Exit code of a worker whose ``on_worker_start`` hook raised.
HOOK_FAILED_EXIT = 6


def child_main(
    conn: Channel,
    slot: Slot,
    store_url: str,
    registry: Registry,
    *,
    lease_seconds: float,
    name: str,
    claim: ClaimPolicy | None = None,
    die_with_parent: bool = False,
    concurrency: int = 1,
    factory: type[Worker] | None = None,
) -> int:
    """Entry of a freshly forked worker: ignore stop signals, open the store, call the start
    hooks, serve, call the stop hooks. ``factory`` is the worker class (``Worker`` by default).

    With ``die_with_parent`` the worker is killed outright when its parent ends (the force-run
    workers, whose leases their parent's owner holds); otherwise it finishes the runs in
    progress, records them and leaves.
    """
    # Workers stay in the scheduler's process group (Ctrl-C and `kill -- -PGID` reach them) but
    # the scheduler alone decides: it drains, hands back and stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the pool around fork
    if die_with_parent and (not owner.die_with_parent(signal.SIGKILL) or os.getppid() == 1):
        return 1
    try:
        worker = (factory or Worker)(
            conn, slot, store_url, registry, lease_seconds=lease_seconds, name=name, claim=claim,
            concurrency=concurrency,
        )  # fmt: skip
    except StoreUnavailable as exc:
        logger.error("%s cannot open its store: %s", name, exc)
        return NO_STORE_EXIT
    try:
        run_hooks(registry.start_hooks)
    except Exception:
        logger.exception("%s: an on_worker_start hook failed; this worker stops", name)
        return HOOK_FAILED_EXIT
    code = worker.serve()
    try:
        run_hooks(registry.stop_hooks)
    except Exception:
        logger.exception("%s: an on_worker_stop hook failed", name)
    return code


_EXIT_REASONS = {
    NO_STORE_EXIT: "could not open the store",
    LEASE_LOST_EXIT: "stopped: it could not keep the lease of its running task",
    HOOK_FAILED_EXIT: "a worker start hook failed",
    RETIRED_EXIT: "retired: a run in one of its threads overran its timeout",
}


def reap(pid: int, *, block: bool) -> tuple[str | None, int | None]:
    """Why worker ``pid`` ended and its exit code ((None, None) while it runs)."""
    try:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return "vanished", None
    if done == 0:
        return None, None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})", None
    code = os.waitstatus_to_exitcode(status)
    why = _EXIT_REASONS.get(code)
    return f"exited with code {code}" + (f" ({why})" if why else ""), code


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
