"""Channel: one end of the duplex pipe between the pool and a worker, carrying pickled messages.

``multiprocessing.Pipe`` does the same job, but importing ``multiprocessing`` costs about a fifth
of the scheduler's start and each of its messages is pickled through a ``ForkingPickler`` built
for that call. A message here is a 4-byte length and a pickle, over one end of a Unix
``socketpair``. Both ends belong to processes forked from one parent, so the pickles never cross a
trust boundary. Imports only the standard library.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from collections.abc import Iterable
from typing import Any, Protocol

_LENGTH = struct.Struct("!I")


class HasFileno(Protocol):
    def fileno(self) -> int: ...


class Channel:
    """One end of a message pipe: ``send`` and ``recv`` whole Python objects.

    ``recv`` raises ``EOFError`` once the other end is closed (its process exited or closed it);
    ``send`` raises ``OSError`` (``BrokenPipeError``) when the other end is gone.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """Two connected ends; fork, then each process closes the end it does not use."""
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(left), cls(right)

    def fileno(self) -> int:
        """The descriptor to wait on: readable when a message (or the end of the pipe) arrives."""
        return self._sock.fileno()

    def send(self, message: Any) -> None:
        """Send one picklable object (blocks while the pipe is full)."""
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(_LENGTH.pack(len(data)) + data)

    def recv(self) -> Any:
        """Wait for the next object and return it."""
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return pickle.loads(self._read(size))

    def poll(self, timeout: float = 0.0) -> bool:
        """True when ``recv`` would not block (a message, or the end of the pipe, is waiting)."""
        return wait_readable([self], timeout)

    def close(self) -> None:
        """Close this end; the other end then reads the end of the pipe."""
        self._sock.close()

    def _read(self, size: int) -> bytes:
        data = self._sock.recv(size)
        if len(data) == size:
            return data
        chunks = bytearray(data)
        while len(chunks) < size:
            if not data:
                raise EOFError("the other end of the channel is closed")
            data = self._sock.recv(size - len(chunks))
            chunks += data
        return bytes(chunks)


def wait_readable(sources: Iterable[int | HasFileno], timeout: float) -> bool:
    """Block until one of ``sources`` (descriptors or objects with ``fileno()``) is readable or
    at its end, or ``timeout`` seconds pass (rounded up to whole milliseconds); True if one is."""
    poller = select.poll()
    for source in sources:
        poller.register(source if isinstance(source, int) else source.fileno(), select.POLLIN)
    millis = max(0, int(timeout * 1000 + 0.999999))
    return bool(poller.poll(millis))
