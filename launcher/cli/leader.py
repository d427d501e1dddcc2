"""``launcher leader``: the leader pod's entrypoint."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from .. import logs
from ..config import LaunchConfig
from ..discovery import parse_hosts
from ..errors import ConfigError
from ..leader import Leader
from .options import GROUP, HEALTH, LOGGING, PARALLELISM, TRITON, apply, build_config

if TYPE_CHECKING:
    from ..k8s import KubernetesGroup
    from ..k8s.events import GroupEvents
    from ..k8s.pods import GroupIdentity

log = logging.getLogger("launcher.leader")

HOSTS = click.option(
    "--hosts", envvar="LAUNCHER_HOSTS", show_envvar=True, default=None, metavar="POD[=ADDR],...",
    help="Static group members in worker-index order; unset: find the group through the Kubernetes API.",
)


@click.command()
@apply(PARALLELISM, TRITON, GROUP, HEALTH, LOGGING)
@HOSTS
def leader(**params: Any) -> int:
    """Find the group's pods, launch one tritonserver per GPU with mpirun, supervise."""
    logs.setup(params["log_format"], params["verbosity"])
    try:
        config = build_config(params)
    except ConfigError as exc:
        return report_in_kubernetes(exc, params)
    hosts = parse_hosts(params["hosts"], config) if params.get("hosts") else None
    if hosts is not None:
        agent = config.rsh_agent if len(hosts) > 1 else None
        return Leader(config, lambda _stop: hosts, agent).run()
    group = kubernetes_group(config)
    try:
        agent = config.rsh_agent if config.pods > 1 else None
        return Leader(config, group, agent, group_changed=group.changed, health_first=True,
                      failure_log=group_events(config, group.namespace)).run()
    finally:
        group.close()


def report_in_kubernetes(exc: ConfigError, params: dict[str, Any]) -> int:
    """A value the chart rendered is wrong: in a pod of an LWS, keep the reason and park like any other
    permanent error (an exit would have LWS recreate the group in a loop); elsewhere, raise it."""
    if params.get("hosts") or not (params.get("lws_name") and params.get("pod_name")):
        raise exc
    from ..config import DEFAULTS
    from ..k8s import resolve_namespace

    fallback = dataclasses.replace(
        DEFAULTS, lws_name=params["lws_name"], pod_name=params["pod_name"], pod_uid=params.get("pod_uid"),
        health_port=params["health_port"] if _is_port(params.get("health_port")) else DEFAULTS.health_port)
    events = group_events(fallback, resolve_namespace(params.get("namespace")))
    return Leader(fallback, _never, agent=None, failure_log=events, check_repository=False).run(found_before=exc)


def _is_port(value: object) -> bool:
    return isinstance(value, int) and 0 < value < 65536


def _never(_stop: object) -> Sequence[Any]:
    raise AssertionError("a leader that reports a configuration error discovers nothing")


def kubernetes_group(config: LaunchConfig) -> KubernetesGroup:
    from ..k8s import KubernetesGroup, resolve_namespace

    if not config.group_key:
        raise ConfigError(
            "--group-key is not set: Kubernetes discovery needs this pod's LWS group key (LAUNCHER_GROUP_KEY, "
            "from the label leaderworkerset.sigs.k8s.io/group-key), or pass static --hosts"
        )
    namespace = resolve_namespace(config.namespace)
    return KubernetesGroup(namespace, config.group_key, config.pods, config.discovery_timeout_s,
                           identity=leader_identity(config))


def leader_identity(config: LaunchConfig) -> GroupIdentity:
    """This pod's own name and uid: discovery accepts only the pods LeaderWorkerSet names after it."""
    from ..k8s.pods import GroupIdentity, check_leader_name

    if not config.pod_name:
        raise _unset("--pod-name", "LAUNCHER_POD_NAME", "metadata.name")
    if not config.pod_uid:
        raise _unset("--pod-uid", "LAUNCHER_POD_UID", "metadata.uid")
    check_leader_name(config.pod_name)
    return GroupIdentity(config.pod_name, config.pod_uid)


def _unset(flag: str, env: str, field: str) -> ConfigError:
    return ConfigError(f"{flag} is not set: Kubernetes discovery accepts only the pods named after this leader "
                       f"pod; set {env} from the downward API (fieldRef {field}), or pass static --hosts")


def group_events(config: LaunchConfig, namespace: str) -> GroupEvents | None:
    """Events on the group's LeaderWorkerSet and this pod, when both are named (the chart names them)."""
    if not (config.lws_name and config.pod_name):
        log.warning("no --lws-name/--pod-name (LAUNCHER_LWS_NAME, LAUNCHER_POD_NAME): failures are not recorded "
                    "as Events, and transient ones restart the group without a backoff")
        return None
    from ..k8s.events import GroupEvents
    from ..k8s.watch import load_api_client

    return GroupEvents(load_api_client(), namespace, config.lws_name, config.pod_name, config.pod_uid)


def parse_leader_args(argv: Sequence[str]) -> LaunchConfig:
    """The config ``launcher leader ARGV`` would run with (used to check the chart's args)."""
    with leader.make_context("leader", list(argv)) as ctx:
        return build_config(ctx.params)
