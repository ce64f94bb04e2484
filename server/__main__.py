"""``python -m server start|stop|status`` (see :mod:`server.cli`)."""

import sys

from .cli import main

sys.exit(main())
