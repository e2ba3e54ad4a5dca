"""``python -m mip360cli`` runs the ``mip360`` command."""

import sys

from .cli import main

sys.exit(main())
