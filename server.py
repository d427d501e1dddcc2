#!/usr/bin/env python3
"""Container entrypoint: ``python3 server.py leader|worker [options]``.

Kept for deployments of the original tutorial; ``launcher leader|worker`` is
the same program.
"""

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main(prog_name="server.py"))
