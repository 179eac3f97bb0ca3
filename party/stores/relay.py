"""One change stream per scheduler, fanned out to its workers through the local wake-up channel.

Every worker of every machine following its own change stream meant every insert woke them all
at once, to race for the same tasks. Instead a scheduler runs one ``ChangeRelay`` (a thread of its
main process): it follows the store's change stream and turns each change into one local
notification (``wakeup.Notifier``), which the workers of that machine already listen to
(``wakeup.Listener``). The stream is re-opened after any error, from the last resume token, with a
growing pause, and logged; when the server can no longer resume from that token (its oplog moved
on), it starts afresh and wakes the workers once, since a change may have been missed. Polling
stays the safety net throughout. Imports nothing of pymongo: the store hands in how to open a
stream. Standard library only, plus ``wakeup``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: First and longest pause (seconds) before a broken change stream is opened again.
FIRST_PAUSE = 0.1
MAX_PAUSE = 10.0
#: Server error codes meaning the resume token can no longer be used (ChangeStreamHistoryLost,
#: ChangeStreamFatalError, InvalidResumeToken-like BadValue on the token).
HISTORY_LOST = frozenset({260, 280, 286})


class Stream(Protocol):
    """What a relay needs of a change stream (pymongo's ``ChangeStream``)."""

    @property
    def alive(self) -> bool: ...

    @property
    def resume_token(self) -> Any: ...

    def try_next(self) -> Any: ...

    def close(self) -> None: ...


class Wake(Protocol):
    def notify(self) -> int: ...


class ChangeRelay:
    """A thread that follows ``open_stream(resume_token)`` and calls ``wake.notify()`` per change.

    ``open_stream(None)`` starts a stream at the present; ``open_stream(token)`` resumes after
    ``token``. ``describe`` names the store in log lines.
    """

    def __init__(
        self,
        open_stream: Callable[[Any], Stream],
        wake: Wake,
        *,
        describe: str = "the store",
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self._open = open_stream
        self._wake = wake
        self._describe = describe
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait
        self._stream: Stream | None = None
        self._lock = threading.Lock()
        self.token: Any = None
        #: How many times the stream was opened (the first time included).
        self.opened = 0
        self._thread = threading.Thread(target=self._run, name="party-change-relay", daemon=True)

    def start(self) -> ChangeRelay:
        """Start following; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        pause = FIRST_PAUSE
        while not self._stopped.is_set():
            try:
                self._follow()
                pause = FIRST_PAUSE
            except Exception as exc:  # any failure: the stream is a convenience, polling is not
                if self._stopped.is_set():
                    return
                code = getattr(exc, "code", None)
                if code in HISTORY_LOST:
                    logger.warning(
                        "change stream on %s cannot resume (%s); starting afresh", self._describe,
                        exc,
                    )  # fmt: skip
                    self.token = None
                    self._wake.notify()  # a change may have been missed: look once
                else:
                    logger.warning(
                        "change stream on %s broke (%s); re-opening in %.1f s from its resume "
                        "token (polling covers the gap)", self._describe, exc, pause,
                    )  # fmt: skip
                self._close_stream()
                if self._sleep(pause):
                    return
                pause = min(pause * 2, MAX_PAUSE)

    def _follow(self) -> None:
        stream = self._open(self.token)
        with self._lock:
            if self._stopped.is_set():
                stream.close()
                return
            self._stream = stream
        self.opened += 1
        if self.opened > 1:
            logger.info("change stream on %s re-opened", self._describe)
        while not self._stopped.is_set():
            change = stream.try_next()
            token = stream.resume_token
            if token is not None:
                self.token = token
            if change is not None:
                self._wake.notify()
            elif not stream.alive:
                raise ConnectionError("the change stream ended")

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a broken stream may fail in turn: nothing to do
                pass

    def close(self) -> None:
        """Stop following and wait (briefly) for the thread."""
        self._stopped.set()
        self._close_stream()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
