"""``python -m atmc_plugin``: the ``atmc`` command."""

import sys

from .cli import main

sys.exit(main())
