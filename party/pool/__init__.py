"""The execution package: worker processes, below both the scheduler and the server's force-run.

``supervisor`` (``WorkerPool``) forks and looks after the workers; ``child`` is a worker's entry
after the fork; ``worker`` is the loop of a worker that runs one run at a time and ``concurrent``
that of one running several (``--concurrency``: async handlers on its event loop, others in its
threads); ``claiming`` sizes what a claiming worker takes; ``leases`` keeps alive the leases of
what a worker holds; ``messages`` are the typed messages between a worker and its pool; ``slot``
is the memory they share (one entry per run); ``outcomes`` what became of runs; ``forcerun`` is
the server's warm pool for ``POST /task/<id>``. The only
package that forks. Imports ``runner``, ``queue``, ``stores``, ``registry``, ``channel``,
``model``, ``errors`` and ``timestamps``.
"""

from .claiming import ClaimPolicy
from .supervisor import Finished, PoolStopped, WorkerPool

__all__ = ["ClaimPolicy", "Finished", "PoolStopped", "WorkerPool"]
