"""``python -m atmc_plugin``: the ``atmc`` command."""

import sys

from .app.cli import main

sys.exit(main())
