"""The shared-memory slot of one worker: which run is in its handler, since when, and a stop flag.

A worker writes the start (``time.monotonic``, which is system-wide on Linux) and the sequence
number of the run in its handler before calling it, and negates the number once the handler
returned; its parent reads them without a message per run, to enforce timeouts and to know which
run a dead worker was in. The parent writes only the stop flag (hand back what has not started).
Each writer assigns its own fields with one slice assignment: ``struct.pack_into`` zeroes its whole
target before filling it, so a reader could see zeros. Standard library only.
"""

from __future__ import annotations

import mmap
import struct

_SLOT = struct.Struct("@dqq")
_RUN = struct.Struct("@dq")
_STOP = struct.Struct("@q")


class Slot:
    """Anonymous shared memory for one worker; create it before the fork."""

    __slots__ = ("_memory",)

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _SLOT.size)

    def read(self) -> tuple[float, int, int]:
        """(started, seq, stop) as last written; seq > 0 means that run is in its handler now.

        The worker may be writing while the parent reads: two equal reads in a row are a value
        that was really written, never a mix of an old and a new one.
        """
        value = _SLOT.unpack_from(self._memory, 0)
        while True:
            again = _SLOT.unpack_from(self._memory, 0)
            if again == value:
                return value
            value = again

    def set_run(self, started: float, seq: int) -> None:
        """(worker) The run ``seq`` entered its handler at ``started``; ``-seq`` once it left."""
        self._memory[: _RUN.size] = _RUN.pack(started, seq)

    def set_stop(self) -> None:
        """(parent) Ask the worker to hand back the runs it has not started."""
        self._memory[_RUN.size : _SLOT.size] = _STOP.pack(1)

    @property
    def stopping(self) -> bool:
        """True once the parent asked the worker to stop."""
        return self.read()[2] != 0

    def close(self) -> None:
        """Release the memory (the parent, once the worker is gone)."""
        self._memory.close()
