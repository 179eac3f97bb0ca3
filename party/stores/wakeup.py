"""Wake-up channels: how a store tells sleeping schedulers that a task became due, without polling.

On one machine the channel is a folder of Unix datagram sockets derived from the store's identity
(its file path or URL): each scheduler binds one socket there (``Listener``), and a process that
commits a queued task sends one byte to every socket in the folder (``Notifier``). Sending never
blocks and never fails the write that triggered it; a socket nobody is bound to any more (its
scheduler died) is removed by the next sender. MongoDB adds a change stream (``mongo.py``), which
also reaches schedulers on other machines. Polling stays the safety net: a lost notification
delays a task by at most the scheduler's poll interval. Standard library only.

The temporary directory is shared with every local user, so the folder sits in a parent that only
its owner can write (``party-<uid>``, mode 0710: the group may reach the sockets, not list or
plant), made by that user and checked before use (a real directory, that owner, no write for
others). A planted or unsafe one is refused: wake-ups are then off, with one warning, and polling
carries on. A failure to notify is never an error for the write that triggered it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: Socket paths must stay under the 108-byte limit of sun_path, so the folder lives in the
#: temporary directory under a short hash of the store's identity, not beside the store file.
_DIGEST_CHARS = 16


#: Longest folder path that leaves room for a socket's name within sun_path (108 bytes).
_MAX_DIR_BYTES = 80


def channel_dir(identity: str, owner: int | None = None) -> Path:
    """The folder of wake-up sockets shared by every process using the store ``identity``.

    It is ``party-<owner>/wake-<hash>`` in the temporary directory, or in ``/tmp`` when that
    directory's path is too long for a socket path (every process of one machine derives the same
    folder either way). ``owner`` is the uid whose private parent holds it: the store file's
    owner for SQLite, so that a server and a scheduler of one group find the same folder; by
    default this process's user.
    """
    digest = hashlib.sha1(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    mine = f"party-{os.getuid() if owner is None else owner}"
    folder = Path(tempfile.gettempdir()) / mine / f"wake-{digest}"
    if len(os.fsencode(folder)) > _MAX_DIR_BYTES:
        folder = Path("/tmp") / mine / f"wake-{digest}"
    return folder


class UnsafeChannel(OSError):
    """The channel's folder or its parent is not what this module made: refused."""


def _check_owned(path: Path, owner: int, *, group_may_write: bool) -> None:
    info = os.lstat(path)  # not stat: a planted symbolic link must not be followed
    unsafe = 0o002 if group_may_write else 0o022
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & unsafe:
        raise UnsafeChannel(
            errno.EPERM,
            f"wake-up folder {path} is not a directory of uid {owner} closed to others "
            f"(mode {stat.filemode(info.st_mode)}, uid {info.st_uid}): refused; another local "
            "user may have planted it",
        )


def open_channel_dir(directory: Path, *, create: bool) -> bool:
    """Check (and with ``create``, make) ``directory`` and its private parent; False when the
    parent does not exist and ``create`` is not asked. Raises ``OSError`` (``UnsafeChannel`` for
    a planted or unsafe one) when it cannot be used."""
    parent = directory.parent
    # The owner comes from the name the folder should have, never from what is found there.
    uid = parent.name.removeprefix("party-")
    owner = int(uid) if parent.name.startswith("party-") and uid.isdigit() else os.getuid()
    if create and owner == os.getuid():
        try:
            os.mkdir(parent, 0o710)
            os.chmod(parent, 0o710)  # the umask must not narrow or widen it
        except FileExistsError:
            pass
    try:
        _check_owned(parent, owner, group_may_write=False)
    except FileNotFoundError:
        return False
    if create:
        try:
            os.mkdir(directory, 0o770)
            os.chmod(directory, 0o770)  # group members (the server's user) may send and clean up
        except FileExistsError:
            pass
    try:
        _check_owned(directory, owner, group_may_write=True)
    except FileNotFoundError:
        return False
    return True


def listener_or_none(directory: Path) -> Listener | None:
    """A ``Listener`` on ``directory``, or None (logged) when the folder cannot be used safely."""
    try:
        return Listener(directory)
    except OSError as exc:
        logger.warning("no wake-ups on %s (%s); polling finds new tasks", directory, exc)
        return None


class Listener:
    """One scheduler's end of the channel: a readable file descriptor for select/poll."""

    def __init__(self, directory: Path) -> None:
        """Bind a socket in ``directory``, made if missing; ``OSError`` (``UnsafeChannel`` for a
        planted folder) when that cannot be done safely."""
        open_channel_dir(directory, create=True)
        self.path = directory / f"{os.getpid()}-{secrets.token_hex(3)}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        old_umask = os.umask(0o007)  # group members (the server's user) may send
        try:
            self._sock.bind(str(self.path))
        except OSError:  # e.g. a TMPDIR so long the path does not fit in sun_path
            self._sock.close()
            raise
        finally:
            os.umask(old_umask)

    def fileno(self) -> int:
        """The descriptor that becomes readable when a notification arrives."""
        return self._sock.fileno()

    def drain(self) -> int:
        """Consume every pending notification; return how many there were."""
        count = 0
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class Notifier:
    """The sending end: ``notify()`` wakes every listener of the channel, cheaply.

    The folder listing is cached and re-read only when the folder changes (a listener came or
    went), so a notification costs one ``stat`` and one ``sendto`` per listening scheduler.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = os.fspath(directory)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._mtime: int | None = None
        self._targets: list[str] = []
        self._checked = False
        self._warned = False

    def _refresh(self) -> list[str]:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            # No scheduler listens here (yet): one failed stat per add, nothing more.
            self._mtime, self._targets, self._checked = None, [], False
            return self._targets
        if not self._checked:
            if not open_channel_dir(self.directory, create=False):
                return []
            self._checked = True
        if mtime != self._mtime:
            self._mtime = mtime
            self._targets = [
                entry.path for entry in os.scandir(self.directory) if entry.name.endswith(".sock")
            ]
        return self._targets

    def notify(self) -> int:
        """Send one byte to every listener; return how many were reached. Never raises: a
        channel that cannot be used is logged once (polling still finds the tasks)."""
        try:
            return self._notify()
        except Exception as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "cannot wake schedulers through %s (%s); they find new tasks by polling",
                    self.directory,
                    exc,
                )
            return 0

    def _notify(self) -> int:
        reached = 0
        for path in self._refresh():
            try:
                self._sock.sendto(b"!", path)
                reached += 1
            except (BlockingIOError, InterruptedError):
                reached += 1  # its buffer is full: a wake-up is already pending there
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    self._remove_stale(path)
                else:
                    logger.debug("wake-up to %s failed: %s", path, exc)
        return reached

    def _remove_stale(self, path: str) -> None:
        # Nobody is bound to it: the scheduler that made it is gone. A live scheduler's socket
        # never refuses, so this cannot remove one that still listens.
        try:
            os.unlink(path)
        except OSError:
            pass
        self._mtime = None

    def close(self) -> None:
        """Release the sending socket."""
        self._sock.close()

    # A store dropped without close() must not leak a ResourceWarning from this helper socket.
    __del__ = close
