"""``python -m party ...``: the command line of ``party.cli`` (serve, up and client commands)."""

import sys

from .cli import main

sys.exit(main())
