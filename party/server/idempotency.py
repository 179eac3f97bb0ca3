"""``POST /tasks`` with an ``Idempotency-Key``: a repeat is answered from the first add.

The key is 1 to 255 visible ASCII characters (400 otherwise). A request whose key is being served
by this server now is answered 409 at once; otherwise, in a store thread: the answer kept for the
key (``TaskQueue.recall``) if the same body bytes came within 24 h (422 for another body), else
the batch is parsed and added with the key (``TaskQueue.add_once``: the key's record and the
tasks in one write, a unique key, so two servers racing with one key add the batch once). Only a
201 is kept: a refused add leaves the key unused. Imports ``admission``, ``errors``, ``model`` and
``server.wire``; nothing of tornado's handlers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import admission
from ..errors import KeyInProgress
from ..model import Task
from . import wire

if TYPE_CHECKING:
    from .pipeline import Context

#: The request header.
HEADER = "Idempotency-Key"
#: Bodies up to this size are parsed as one JSON value; larger ones item by item.
WHOLE_BODY = 64 * 1024

# Keys of the requests this process serves now, per queue (one event loop: no lock needed).
_serving: set[tuple[int, str]] = set()


def check_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` header; 400 unless it is 1 to 255 visible ASCII."""
    return admission.check_key(value)


async def add_once(
    ctx: Context,
    header: str,
    body: bytes,
    encode: Callable[[list[Task]], bytes],
) -> bytes:
    """The 201 body answering ``body`` under the key of ``header``: the first answer again for
    a repeat, else that of a new add; ``encode`` turns the added tasks into that body."""
    key = check_key(header)
    mark = (id(ctx.queue), key)
    if mark in _serving:
        raise KeyInProgress(
            f"the first request with {HEADER} {key!r} is still in progress; repeat it once that "
            "one is answered"
        )
    _serving.add(mark)
    try:
        answer = await ctx.calls(_add_in_thread, ctx, key, body, encode)
    finally:
        _serving.discard(mark)
    ctx.stats.wrote()
    return answer


def _add_in_thread(
    ctx: Context, key: str, body: bytes, encode: Callable[[list[Task]], bytes]
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    replay = ctx.queue.recall(key, digest)
    if replay is not None:
        return replay
    if len(body) > WHOLE_BODY:
        items = wire.parse_tasks_body(body, ctx.max_batch)
    else:
        items = wire.parse_tasks(wire.loads(body), ctx.max_batch)
    del body
    return ctx.queue.add_once(key, digest, items, encode)
