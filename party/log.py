"""Logger names and the one logging set-up, called only by entry points (server, scheduler, cli).

- ``party.server``: one line per request, start-up and shutdown of the HTTP server;
- ``party.scheduler``: claims, task start and end lines, leases, signals;
- ``party.worker``: what happens inside a worker process;
- ``party.store``: store connection trouble and retries.

Library modules log to ``logging.getLogger(__name__)``, which sits under ``party``. A store URL is
logged through ``redact``, never as it was given. Standard library only.
"""

from __future__ import annotations

import logging
import re
import sys

SERVER = "party.server"
SCHEDULER = "party.scheduler"
WORKER = "party.worker"
STORE = "party.store"

FORMAT = "%(asctime)s %(levelname)-7s %(name)s[%(process)d] %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Send Party's logs (and tornado's) to stderr at ``level``, once per process."""
    root = logging.getLogger()
    if not any(getattr(h, "_party", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._party = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


# The password of ``scheme://user:password@host``, and the values of query options that hold
# secrets (``tlsCertificateKeyFilePassword``, ``authMechanismProperties`` with an AWS token).
_USERINFO_PASSWORD = re.compile(r"(//[^:/?#@]*):[^/?#]*@")
_SECRET_OPTION = re.compile(
    r"([?&;][^=&;#]*(?:password|secret|token|authmechanismproperties)=)[^&;#]*", re.I
)


def redact(url: str) -> str:
    """``url`` safe to log or show: its password and any option holding a secret become ``***``."""
    url = _USERINFO_PASSWORD.sub(r"\1:***@", url)
    return _SECRET_OPTION.sub(r"\1***", url)
