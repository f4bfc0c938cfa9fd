"""``python -m volcache``: the same as the ``volcache`` command."""

import sys

from .cli import main

sys.exit(main())
