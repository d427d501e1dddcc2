"""``launcher preflight``: check the group's fabric through the launch plan, and stop."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import click

from .. import logs
from ..config import LaunchConfig
from ..discovery import parse_hosts, wait_until_reachable
from ..errors import ExitCode
from ..leader import check_fabric
from ..mpi import detect_mpi
from ..plan import Member, TritonCommand, agent_env
from ..preflight.check import format_result
from ..signals import install_stop_handlers
from .leader import HOSTS, kubernetes_group
from .options import GROUP, LOGGING, PARALLELISM, TRITON, apply, build_config


@click.command()
@apply(PARALLELISM, TRITON, GROUP, LOGGING)
@HOSTS
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def preflight(**params: Any) -> int:
    """Run a small MPI (and NCCL) program on every rank: identity, GPUs, collectives, bandwidth."""
    logs.setup(params["log_format"], params["verbosity"])
    config = build_config(params)
    environ = dict(os.environ)
    mpirun, flavor = detect_mpi(config.mpirun, environ)
    stop = threading.Event()
    install_stop_handlers(stop)
    members = parse_hosts(params["hosts"], config) if params.get("hosts") else group_members(config, environ, stop)
    result = check_fabric(config, members, mpirun, flavor, TritonCommand(config.tritonserver), environ,
                          config.rsh_agent if len(members) > 1 else None, stop)
    click.echo(json.dumps(result.to_dict(), indent=2) if params["output"] == "json" else format_result(result))
    return ExitCode.OK if result.passed else ExitCode.PREFLIGHT_FAILED


def group_members(config: LaunchConfig, environ: dict[str, str], stop: threading.Event) -> Sequence[Member]:
    """In a leader pod without --hosts: the group found through the Kubernetes API as the leader finds
    it, once every worker answers through the agent."""
    group = kubernetes_group(config)
    try:
        members = group(stop)
    finally:
        group.close()
    if len(members) > 1:
        wait_until_reachable(config.rsh_agent, members[1:], config.discovery_timeout_s, stop,
                             {**environ, **agent_env(config, members)})
    return members
