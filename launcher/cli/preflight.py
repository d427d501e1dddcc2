"""``launcher preflight``: check the group's fabric through the launch plan, and stop."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import click

from .. import logs
from ..discovery import parse_hosts
from ..errors import ConfigError, ExitCode
from ..leader import check_fabric
from ..mpi import detect_mpi
from ..plan import TritonCommand
from ..preflight.check import format_result
from ..signals import install_stop_handlers
from .leader import HOSTS
from .options import GROUP, LOGGING, PARALLELISM, TRITON, apply, build_config


@click.command()
@apply(PARALLELISM, TRITON, GROUP, LOGGING)
@HOSTS
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def preflight(**params: Any) -> int:
    """Run a small MPI (and NCCL) program on every rank: identity, GPUs, collectives, bandwidth."""
    logs.setup(params["log_format"], params["verbosity"])
    config = build_config(params)
    if not params.get("hosts"):
        raise ConfigError("--hosts is not set; pass the group's pods with --hosts pod0,pod1,... (LAUNCHER_HOSTS)")
    members = parse_hosts(params["hosts"], config)
    environ = dict(os.environ)
    mpirun, flavor = detect_mpi(config.mpirun, environ)
    stop = threading.Event()
    install_stop_handlers(stop)
    result = check_fabric(config, members, mpirun, flavor, TritonCommand(config.tritonserver), environ,
                          config.rsh_agent if len(members) > 1 else None, stop)
    click.echo(json.dumps(result.to_dict(), indent=2) if params["output"] == "json" else format_result(result))
    return ExitCode.OK if result.passed else ExitCode.PREFLIGHT_FAILED
