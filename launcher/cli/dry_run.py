"""``launcher dry-run``: print the exact plan, no cluster needed."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ..config import LaunchConfig
from ..discovery import parse_hosts
from ..errors import ConfigError
from ..mpi import planned_flavor
from ..plan import TritonCommand, build_plan, format_plan, lws_members
from .options import GROUP, HEALTH, LOGGING, PARALLELISM, TRITON, apply, build_config


@click.command("dry-run")
@apply(PARALLELISM, TRITON, GROUP, HEALTH, LOGGING)  # the leader's own options, so its argv plans as is
@click.option("--hosts", default=None, metavar="POD,...", help="Group members in worker-index order.")
@click.option("--group-index", type=int, default=0, show_default=True,
              help="Without --hosts: plan for the pods of this group of --lws-name.")
@click.option("--mpi", "mpi_version", type=click.Choice(["auto", "4.1", "5.0"]), default="auto", show_default=True,
              help="Open MPI flavour to plan for (auto: ask mpirun --version, else 5.0).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--show-values", is_flag=True, help="Print the values of the environment mpirun sets (hidden: they "
              "may be credentials).")
def dry_run(**params: Any) -> int:
    """Print hosts, ranks, GPUs, the mpirun argv and environment."""
    config = build_config(params)
    members = _members(params, config)
    flavor = planned_flavor(params["mpi_version"], config.mpirun)
    agent = config.rsh_agent if len(members) > 1 else None
    plan = build_plan(
        config, members, flavor, triton=TritonCommand(config.tritonserver), environ=os.environ,
        launch_id="<per-launch id>", is_root=os.geteuid() == 0, agent=agent,
    )
    if params["output"] == "json":
        click.echo(json.dumps(plan.to_dict(params["show_values"]), indent=2))
    else:
        click.echo(format_plan(plan, config, params["show_values"]))
    return 0


def _members(params: dict[str, Any], config: LaunchConfig) -> list[Any]:
    named = click.get_current_context().get_parameter_source("lws_name") == click.core.ParameterSource.COMMANDLINE
    if params["hosts"] and named:  # (LAUNCHER_LWS_NAME of a pod's environment does not count)
        raise ConfigError("--hosts and --lws-name both given: they describe the same pods; keep one")
    if params["hosts"]:
        return parse_hosts(params["hosts"], config)
    if params["group_index"] < 0:
        raise ConfigError(f"--group-index={params['group_index']}: a group index is 0 or more; fix the index")
    return lws_members(params["lws_name"] or "triton", params["group_index"], config.pods)
