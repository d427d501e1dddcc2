"""``launcher leader``: the leader pod's entrypoint."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import click

from .. import logs
from ..config import LaunchConfig
from ..discovery import static_members
from ..errors import ConfigError
from ..leader import Leader
from ..plan import Member
from .options import GROUP, HEALTH, LOGGING, PARALLELISM, TRITON, apply, build_config

HOSTS = click.option(
    "--hosts", envvar="LAUNCHER_HOSTS", show_envvar=True, default=None, metavar="POD[=ADDR],...",
    help="Static group members in worker-index order instead of Kubernetes discovery.",
)


@click.command()
@apply(PARALLELISM, TRITON, GROUP, HEALTH, LOGGING)
@HOSTS
def leader(**params: Any) -> int:
    """Find the group's pods, launch one tritonserver per GPU with mpirun, supervise."""
    logs.setup(params["log_format"], params["verbosity"])
    config = build_config(params)
    hosts = hosts_from(params.get("hosts"), config)
    if hosts is None:
        raise ConfigError(
            "--hosts is not set: Kubernetes discovery is not available in this release; "
            "pass the group's pods with --hosts pod0,pod1,... (LAUNCHER_HOSTS)"
        )

    def discover(_stop: threading.Event) -> Sequence[Member]:
        return hosts

    agent = config.rsh_agent if len(hosts) > 1 else None
    return Leader(config, discover, agent).run()


def hosts_from(text: str | None, config: LaunchConfig) -> list[Member] | None:
    if not text:
        return None
    words = [w.strip() for w in text.split(",") if w.strip()]
    if len(set(w.partition("=")[0] for w in words)) != len(words):
        raise ConfigError(f"--hosts={text}: a pod is listed twice; list each pod of the group once")
    if len(words) != config.pods:
        raise ConfigError(
            f"--hosts={text}: {len(words)} pods given but tp*pp/gpus-per-pod="
            f"{config.world_size}/{config.gpus_per_pod} needs {config.pods}; list one host per pod"
        )
    return static_members(words)


def parse_leader_args(argv: Sequence[str]) -> LaunchConfig:
    """The config ``launcher leader ARGV`` would run with (used to check the chart's args)."""
    with leader.make_context("leader", list(argv)) as ctx:
        return build_config(ctx.params)
