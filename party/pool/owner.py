"""Owners a process on the same host can check: who holds a lease, and whether it is provably gone.

Also the one place that ties a child's life to its parent's (``die_with_parent``).

A lease token carries its owner as ``<boot id>.<PID namespace>.<pid>.<start time>``: the boot id
(``/proc/sys/kernel/random/boot_id``) and the PID namespace (the inode of ``/proc/self/ns/pid``)
say on which running kernel and in which container the pid means something (two containers on one
host share the boot id but not their pids), and the start time (clock ticks after boot, field 22
of ``/proc/<pid>/stat``) tells the owner from a later process that reuses its pid. An owner is
gone only when all of that can be checked here and no such process lives; an owner from another
host, boot or namespace is never called gone (its leases expire as before). Linux ``/proc`` only:
elsewhere no owner is ever called gone. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache


@lru_cache(maxsize=1)
def _here() -> tuple[str, str] | None:
    """(boot id, PID namespace) of this process, or None where /proc cannot say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
    return boot, namespace


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks after boot (None: no such process, or a
    zombie, which has finished running)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def identity(pid: int | None = None) -> str | None:
    """The owner string of process ``pid`` (this one by default); None where it cannot be made."""
    here = _here()
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    if here is None or start is None:
        return None
    return f"{here[0]}.{here[1]}.{pid}.{start}"


def pid_of(owner: str) -> int | None:
    """The pid an owner string names (None if it names none)."""
    parts = owner.split(".")
    try:
        return int(parts[2]) if len(parts) == 4 else None
    except ValueError:
        return None


def is_gone(owner: str) -> bool:
    """True only when ``owner`` ran on this host's running kernel, in this PID namespace, and no
    process with its pid and start time lives any more."""
    parts = owner.split(".")
    here = _here()
    if len(parts) != 4 or here is None or (parts[0], parts[1]) != here:
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    return _start_time(pid) != parts[3]


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent thread ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``); False where that is not available. Call it in a child after
    the fork, then check ``os.getppid()``: the parent may have died before the call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
