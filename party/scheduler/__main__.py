"""``python -m party.scheduler``: the same entry point as ``python scheduler/``."""

from __future__ import annotations

from .main import main

raise SystemExit(main())
