"""``python scheduler/``: run the Party scheduler from the root of a plain checkout.

Python puts this folder, not the repository root, first on ``sys.path``; the root is added here so
``party`` imports without installing the package. Keep this the only file in the folder: any other
module here would shadow a standard-library module of the same name for the whole process.
"""

import os
import signal
import sys

# A stop signal that arrives while the rest is imported is kept for main(), which stops gracefully
# once the loop exists, instead of letting it kill the process half started.
EARLY: list[int] = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: EARLY.append(signum))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from party.scheduler.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(early=EARLY))
