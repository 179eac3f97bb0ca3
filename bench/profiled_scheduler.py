"""``python bench/profiled_scheduler.py PROFILES [scheduler flags]``: the scheduler under cProfile.

The scheduler process and each forked worker are profiled separately: the scheduler's profile
is written to ``PROFILES/scheduler.prof`` when it stops, each worker's to
``PROFILES/worker-<pid>.prof`` when its serve loop ends (the pool then leaves with ``os._exit``,
which would skip any exit hook).
Used by the ``profile`` section of ``bench/run.py``.
"""

from __future__ import annotations

import cProfile
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from party.pool import worker  # noqa: E402
from party.scheduler.main import main  # noqa: E402

PROFILES = Path(sys.argv.pop(1))
_serve = worker.Worker.serve


def profiled_serve(self: worker.Worker) -> int:
    profile = cProfile.Profile()
    profile.enable()
    try:
        return _serve(self)
    finally:
        profile.disable()
        profile.dump_stats(str(PROFILES / f"worker-{os.getpid()}.prof"))


worker.Worker.serve = profiled_serve  # type: ignore[method-assign]

if __name__ == "__main__":
    profile = cProfile.Profile()
    code = profile.runcall(main, sys.argv[1:])
    profile.dump_stats(str(PROFILES / "scheduler.prof"))
    sys.exit(code)
