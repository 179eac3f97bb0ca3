"""Recovery of the leases of processes that are provably gone, before their leases expire.

The owner written into each lease is checked the way a scheduler on the same host checks it:
boot id, PID namespace, pid and start time. A pid reused by another process, an owner from
another namespace or another boot is never taken for a dead one.
"""

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from party.model import Status
from party.pool import owner
from party.queue import TaskQueue


def dead_owner():
    """The owner string of a process that lived and is gone (read while it still ran: a process
    that already exited has no start time to read)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    who = owner.identity(proc.pid)
    proc.communicate(timeout=30)
    assert who is not None
    return who


def test_this_process_is_not_gone():
    assert not owner.is_gone(owner.identity())


@pytest.mark.processes
def test_an_exited_process_is_gone():
    me = dead_owner()
    assert me is not None and owner.is_gone(me)


def test_a_reused_pid_does_not_fool_the_check():
    boot, namespace, pid, start = owner.identity().split(".")
    # Our own pid, alive, but with another start time: the process that held the lease ended and
    # this one reused its pid.
    assert owner.is_gone(f"{boot}.{namespace}.{pid}.{int(start) + 1}")


def test_an_owner_of_another_pid_namespace_or_boot_is_never_called_gone():
    boot, namespace, pid, start = owner.identity().split(".")
    dead = 2**22 + 17  # above any pid_max default: no such process here
    assert not owner.is_gone(f"{boot}.{int(namespace) + 1}.{dead}.{start}")
    assert not owner.is_gone(f"{'0' * 32}.{namespace}.{dead}.{start}")
    assert owner.is_gone(f"{boot}.{namespace}.{dead}.{start}")
    assert not owner.is_gone("not an owner")


@pytest.mark.processes
def test_orphaned_leases_are_recovered_at_once_and_live_ones_are_left(store, registry, clock):
    dead = dead_owner()
    gone = TaskQueue(store, registry, lease_seconds=60, clock=clock, owner=dead)
    alive = TaskQueue(store, registry, lease_seconds=60, clock=clock, owner=owner.identity())
    anonymous = TaskQueue(store, registry, lease_seconds=60, clock=clock)
    tasks = {}
    for name, queue in (("gone", gone), ("alive", alive), ("anonymous", anonymous)):
        (task,) = queue.add([{"party": "Noop", "data": {"who": name}}])
        queue.claim_now(task.id)
        tasks[name] = task.id
    recovered = alive.recover_orphans(owner.is_gone)
    assert [t.id for t in recovered] == [tasks["gone"]]
    taken = alive.get(tasks["gone"])
    assert (taken.status, taken.attempts, taken.lease) == (Status.QUEUED, 1, None)
    assert taken.last_error["type"] == "LeaseExpired" and "is gone" in taken.last_error["message"]
    for name in ("alive", "anonymous"):
        assert alive.get(tasks[name]).status == Status.RUNNING
    # Nothing expired: an orphan is taken back a whole lease before recover_expired would.
    assert alive.recover_expired(now=clock.now + timedelta(seconds=30)) == []


def test_a_lease_carries_its_owner_after_the_random_token(store, registry, clock):
    queue = TaskQueue(store, registry, clock=clock, owner=owner.identity())
    (task,) = queue.add([{"party": "Noop"}])
    lease = queue.claim_now(task.id).lease
    random, _, who = lease.partition("~")
    assert len(random) == 24 and who == owner.identity() and str(os.getpid()) in who


@pytest.mark.processes
def test_a_scheduler_leaves_its_own_dead_workers_leases_to_its_pool(store, registry, clock):
    from party.scheduler import Scheduler

    class Pool:  # stands for a pool that has not yet noticed its worker died
        pids = []

    dead = dead_owner()
    pid = owner.pid_of(dead)
    scheduler = Scheduler(TaskQueue(store, registry, clock=clock), Pool())
    assert scheduler._orphaned(dead)
    Pool.pids = [pid]
    # The pool fails the run and hands back the unstarted tasks without an attempt: not this pass.
    assert not scheduler._orphaned(dead)
