"""The scheduler process: ``Scheduler`` (the loop, in ``loop``) and its entry point (``main``).

Run it as ``python scheduler/`` from a checkout or ``python -m party.scheduler``. Imports the pool,
queue, stores, registry, config and log layers; never the server or tornado.
"""

from __future__ import annotations

from .loop import Scheduler, Tick

__all__ = ["Scheduler", "Tick"]
