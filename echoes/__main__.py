"""``python -m echoes``: the same as the ``echoes`` console script."""

import sys

from echoes.cli import main

sys.exit(main())
