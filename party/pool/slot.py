"""The shared memory of one worker: which runs are in their handlers, since when, and a stop flag.

A worker that runs up to ``size`` runs at once has ``size`` run entries. Before a run enters its
handler the worker writes its start (``time.monotonic``, which is system-wide on Linux) and its
sequence number into a free entry, and negates the number once the handler returned; its parent
reads them without a message per run, to enforce timeouts, to show what runs where, and to know
which runs a dead worker had in progress (each is failed; what it held unstarted is handed back).
The parent writes only the stop flag (hand back what has not started). Each writer assigns its own
fields with one slice assignment: ``struct.pack_into`` zeroes its whole target before filling it,
so a reader could see zeros. Standard library only.
"""

from __future__ import annotations

import mmap
import struct

_RUN = struct.Struct("@dq")
_STOP = struct.Struct("@q")


class Slot:
    """Anonymous shared memory for one worker and ``size`` runs at once; create it before the
    fork."""

    __slots__ = ("_memory", "_runs", "_spans", "size")

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self._runs = struct.Struct("@" + "dq" * size)
        # The slice of each run entry, computed once: set_run runs twice per run.
        self._spans = [
            slice(_STOP.size + _RUN.size * i, _STOP.size + _RUN.size * (i + 1)) for i in range(size)
        ]
        self._memory = mmap.mmap(-1, _STOP.size + self._runs.size)

    def entries(self) -> list[tuple[float, int]]:
        """Every run entry as last written: (started, seq); seq > 0 means that run is in its
        handler now, -seq that it left it, 0 that the entry was never used.

        The worker may be writing while the parent reads: two equal reads in a row are values
        that were really written, never a mix of an old and a new one.
        """
        value = self._runs.unpack_from(self._memory, _STOP.size)
        while True:
            again = self._runs.unpack_from(self._memory, _STOP.size)
            if again == value:
                break
            value = again
        return [(value[i], value[i + 1]) for i in range(0, len(value), 2)]

    def running(self) -> list[tuple[float, int]]:
        """(started, seq) of the runs in their handlers now."""
        if self.size == 1:  # the common case, read on every poll of the pool
            entry = _RUN.unpack_from(self._memory, _STOP.size)
            while True:
                again = _RUN.unpack_from(self._memory, _STOP.size)
                if again == entry:
                    return [entry] if entry[1] > 0 else []
                entry = again
        return [entry for entry in self.entries() if entry[1] > 0]

    def set_run(self, index: int, started: float, seq: int) -> None:
        """(worker) The run ``seq`` entered its handler at ``started``, in entry ``index``;
        ``-seq`` once it left."""
        self._memory[self._spans[index]] = _RUN.pack(started, seq)  # not pack_into: see above

    def set_stop(self) -> None:
        """(parent) Ask the worker to hand back the runs it has not started."""
        self._memory[: _STOP.size] = b"\x01" * _STOP.size  # every byte: ``stopping`` reads one

    @property
    def stopping(self) -> bool:
        """True once the parent asked the worker to stop (a read of one byte of the flag)."""
        return self._memory[0] != 0

    def close(self) -> None:
        """Release the memory (the parent, once the worker is gone)."""
        self._memory.close()
