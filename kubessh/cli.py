"""``kubessh <pod> <command...>``: placeholder entry point.

The exec-through-the-API implementation lands with Kubernetes discovery; until
then it refuses to run, loudly and non-zero, so mpirun never hangs on it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(f"kubessh: not available in this release (asked to run in {args[:1]}); "
          "use the launcher's --hosts with another --rsh-agent", file=sys.stderr)
    return 69


if __name__ == "__main__":
    sys.exit(main())
