"""The one exception tree of Party; imports nothing from the package.

::

    PartyError
     ├── ConfigError          a setting is missing or wrong (names the variable and the fix)
     ├── RegistryError        handler discovery failed (duplicate name, unimportable source)
     ├── StoreUnavailable     the store did not answer, or cannot take a write
     │    └── StoreBusy       a lock the call needs was not had in the time it was given
     └── TaskException        a request about tasks that cannot be honoured (the seeds' name)
          ├── ValidationError the input is malformed: nothing was written       (HTTP 400)
          ├── NotFound        no task with that id                              (HTTP 404)
          ├── Conflict        the task's state forbids it, or a singleton clash (HTTP 409)
          │    └── KeyInProgress  the first add under an Idempotency-Key is still running (409)
          └── KeyMismatch     an Idempotency-Key was used with another body             (HTTP 422)

The HTTP status beside each class is applied by the server, not here.
"""

from __future__ import annotations


class PartyError(Exception):
    """Base of every error Party raises on purpose."""


class ConfigError(PartyError):
    """A setting (flag or environment variable) has an unusable value."""


class RegistryError(PartyError):
    """Handlers could not be discovered: a duplicate name or a source that fails to import."""


class StoreUnavailable(PartyError):
    """The store could not be reached or did not answer in time."""


class StoreBusy(StoreUnavailable):
    """A lock the call needs (the connection, the writers' lock) was not had within the wait the
    caller set with ``Store.lock_wait``; nothing was written."""


class TaskException(PartyError):
    """A request about tasks cannot be honoured; the seeds raise it for a singleton clash."""


class ValidationError(TaskException):
    """Input is malformed. ``index`` names the offending item of a batch, ``field`` its field."""

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field


class NotFound(TaskException):
    """No task has the given id."""


class Conflict(TaskException):
    """The task's status forbids the operation, or a recurring singleton already exists."""

    def __init__(self, message: str, *, index: int | None = None):
        super().__init__(message)
        self.message = message
        self.index = index


class KeyInProgress(Conflict):
    """An add under this ``Idempotency-Key`` is in progress: its answer is not known yet."""

    def __init__(self, message: str):
        super().__init__(message)


class KeyMismatch(TaskException):
    """This ``Idempotency-Key`` was used within 24 h with another request body."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
