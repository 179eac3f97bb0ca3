"""Typed messages between a worker and its pool, each tagged with its kind on the wire.

A worker tells its parent what it claimed (``Claimed``) and how each run ended (``Report``); the
parent pushes runs to a force-run worker as ``Push``. On the wire a message is a plain tuple whose
first element is its tag (a named tuple pickles as a class reference and costs several times
more): adding a field to one kind can never make it look like another. Every kind carries its
sequence number second (``wire[1]``). Imports ``model`` only.
"""

from __future__ import annotations

from typing import NamedTuple

from ..model import Task

CLAIMED = 0
REPORT = 1

#: Status value a worker reports for a task it handed back unstarted (its attempt given back).
RELEASED = "released"


class Claimed(NamedTuple):
    """A task a worker claimed: enough for its parent to hand it back, fail it if the worker dies
    and enforce its handler's timeout."""

    seq: int
    id: str
    party: str
    attempts: int
    lease: str | None


class Report(NamedTuple):
    """One finished (or handed back) run."""

    seq: int
    status: str | None  # a Status value, RELEASED, or None when the outcome was discarded
    duration: float
    error: str | None  # the error type of a failed run
    late: float = 0.0  # seconds from when it became due to when its run started


class Push(NamedTuple):
    """A run the parent hands to a force-run worker: start it at once (``not_before`` None) or
    not before that wall-clock time (epoch seconds)."""

    seq: int
    task: Task
    not_before: float | None


Message = Claimed | Report
Wire = tuple[object, ...]


def claimed(seq: int, task: Task) -> Wire:
    """The wire form of ``Claimed`` for ``task``."""
    return (CLAIMED, seq, task.id, task.party, task.attempts, task.lease)


def report(
    seq: int, status: str | None, duration: float, error: str | None, late: float = 0.0
) -> Wire:
    """The wire form of ``Report``."""
    return (REPORT, seq, status, duration, error, late)


def decode(wire: Wire) -> Message:
    """The message a wire tuple carries; ``ValueError`` for an unknown tag."""
    tag = wire[0]
    if tag == REPORT:
        return Report(*wire[1:])  # type: ignore[arg-type]
    if tag == CLAIMED:
        return Claimed._make(wire[1:])  # a third faster than Claimed(*wire[1:])
    raise ValueError(f"unknown message tag {tag!r}")
