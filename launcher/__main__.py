"""``python -m launcher``: the same program as the ``launcher`` command."""

import sys

from .cli import main

sys.exit(main())
