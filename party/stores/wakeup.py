"""Wake-up channels: how a store tells sleeping schedulers that a task became due, without polling.

On one machine the channel is a folder of Unix datagram sockets derived from the store's identity
(its file path or URL): each scheduler binds one socket there (``Listener``), and a process that
commits a queued task sends one byte to every socket in the folder (``Notifier``). Sending never
blocks and never fails the write that triggered it; a socket nobody is bound to any more (its
scheduler died) is removed by the next sender. MongoDB adds a change stream (``mongo.py``), which
also reaches schedulers on other machines. Polling stays the safety net: a lost notification
delays a task by at most the scheduler's poll interval. Standard library only.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: Socket paths must stay under the 108-byte limit of sun_path, so the folder lives in the
#: temporary directory under a short hash of the store's identity, not beside the store file.
_DIGEST_CHARS = 16


#: Longest folder path that leaves room for a socket's name within sun_path (108 bytes).
_MAX_DIR_BYTES = 80


def channel_dir(identity: str) -> Path:
    """The folder of wake-up sockets shared by every process using the store ``identity``.

    It lives in the temporary directory, or in ``/tmp`` when that directory's path is too long
    for a socket path (every process of one machine derives the same folder either way).
    """
    digest = hashlib.sha1(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    folder = Path(tempfile.gettempdir()) / f"party-wake-{digest}"
    if len(os.fsencode(folder)) > _MAX_DIR_BYTES:
        folder = Path("/tmp") / f"party-wake-{digest}"
    return folder


class Listener:
    """One scheduler's end of the channel: a readable file descriptor for select/poll."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o770, parents=True, exist_ok=True)
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
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._mtime: int | None = None
        self._targets: list[str] = []

    def _refresh(self) -> list[str]:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._targets = None, []
            return self._targets
        if mtime != self._mtime:
            self._mtime = mtime
            self._targets = [
                entry.path for entry in os.scandir(self.directory) if entry.name.endswith(".sock")
            ]
        return self._targets

    def notify(self) -> int:
        """Send one byte to every listener; return how many were reached. Never raises."""
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
