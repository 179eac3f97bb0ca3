"""Party: a job-queue daemon. Tasks arrive over HTTP and run in a post-fork worker pool.

The public API is what handler modules need; importing it loads neither tornado nor pymongo.
"""

from .errors import TaskException
from .handler import TaskBase
from .timestamps import system_now

__version__ = "0.1.0"

__all__ = ["TaskBase", "TaskException", "system_now", "__version__"]
