"""Options shared by the commands, and the one place that turns them into a config.

Every option has an environment fallback (LAUNCHER_*), since containers are
configured by environment; the original tutorial's flag spellings are kept
as aliases so existing deployments work unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import DEFAULTS, LaunchConfig, check_range, parse_env_assignments, validate

F = TypeVar("F", bound=Callable[..., Any])
D = DEFAULTS  # every default below is the config's own


class Ranged(click.types.IntParamType):
    """An integer within bounds, refused with the launcher's one-line error (flag, rule, fix)."""

    def __init__(self, low: int, high: int, what: str) -> None:
        self.low, self.high, self.what = low, high, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = int(super().convert(value, param, ctx))
        flag = param.opts[0] if param is not None and param.opts else "value"
        return check_range(flag, number, self.low, self.high, self.what)


PORT = Ranged(1, 65535, "a port")


def _opt(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=env, show_envvar=True, show_default=True, **kwargs)


LOGGING = [
    _opt("--log-format", env="LAUNCHER_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text",
         help="The launcher's own log lines."),
    _opt("-v", "--verbose", "verbosity", env="LAUNCHER_VERBOSE", count=True,
         help="More logging (launcher debug; Triton --log-verbose).")
]

HEALTH = [
    _opt("--health-port", env="LAUNCHER_HEALTH_PORT", type=PORT, default=D.health_port,
         help="Port of the launcher's /healthz, /readyz and /metrics."),
]

PARALLELISM = [
    _opt("--tp", env="LAUNCHER_TP", type=int, default=D.tp, help="Tensor-parallel size."),
    _opt("--pp", env="LAUNCHER_PP", type=int, default=D.pp, help="Pipeline-parallel size."),
    _opt("--gpus-per-pod", "--gpu_per_node", "gpus_per_pod", env="LAUNCHER_GPUS_PER_POD", type=int,
         default=D.gpus_per_pod,
         help="GPUs (ranks) in each pod of the group."),
]

TRITON = [
    _opt("--model-repo", "--triton_model_repo_dir", "model_repo", env="LAUNCHER_MODEL_REPO",
         type=click.Path(path_type=Path), default=D.model_repo, help="Triton model repository."),
    _opt("--model", env="LAUNCHER_MODEL", default=D.model, help="Model that ranks other than 0 load explicitly."),
    _opt("--http-port", env="LAUNCHER_HTTP_PORT", type=PORT, default=D.http_port, help="Rank 0's HTTP port."),
    _opt("--grpc-port", env="LAUNCHER_GRPC_PORT", type=PORT, default=D.grpc_port, help="Rank 0's gRPC port."),
    _opt("--metrics-port", env="LAUNCHER_METRICS_PORT", type=PORT, default=D.metrics_port,
         help="Rank 0's metrics port."),
    _opt("--iso8601", env="LAUNCHER_ISO8601", count=True, help="ISO 8601 timestamps in Triton's logs."),
    _opt("--triton-log-verbose", env="LAUNCHER_TRITON_LOG_VERBOSE", type=int, default=None,
         help="Triton --log-verbose level (default: the -v count)."),
    _opt("--model-load-threads", env="LAUNCHER_MODEL_LOAD_THREADS", type=int, default=D.model_load_threads,
         help="Triton --model-load-thread-count."),
    _opt("--restricted-apis", env="LAUNCHER_RESTRICTED_APIS", default=",".join(D.restricted_apis),
         metavar="API,...|none", help="Rank 0's Triton APIs that answer only requests whose admin-key header "
         "matches LAUNCHER_ADMIN_KEY (unset: a random key per launch, so nobody can call them)."),
    _opt("--tritonserver", env="LAUNCHER_TRITONSERVER", default=D.tritonserver,
         help="tritonserver binary (name on PATH or path)."),
    _opt("--mpirun", env="LAUNCHER_MPIRUN", default=D.mpirun, help="mpirun binary (Open MPI 4.1 or 5.x)."),
    _opt("--env", "extra_env", env="LAUNCHER_ENV", multiple=True, metavar="NAME=VALUE|NAME",
         help="Extra environment for every rank (repeatable); a bare NAME passes on this environment's NAME "
              "(e.g. from a Secret), so its value is in no command line."),
    _opt("--forward-env", env="LAUNCHER_FORWARD_ENV", multiple=True, metavar="NAME|PREFIX_",
         help=f"Variables passed on to ranks (repeatable; default: {' '.join(D.forward_env)})."),
    _opt("--nsys/--no-nsys", "--enable_nsys", "nsys", env="LAUNCHER_NSYS", default=D.nsys.enabled,
         help="Wrap every rank in Nsight Systems."),
    _opt("--nsys-binary", env="LAUNCHER_NSYS_BINARY", default=D.nsys.binary, help="Nsight Systems binary."),
    _opt("--nsys-output", env="LAUNCHER_NSYS_OUTPUT", default=D.nsys.output_dir, help="Directory for rank reports."),
    _opt("--nsys-trace", env="LAUNCHER_NSYS_TRACE", default=D.nsys.trace, help="nsys --trace set."),
    _opt("--preflight/--no-preflight", "preflight", env="LAUNCHER_PREFLIGHT", default=D.preflight.enabled,
         help="Check the fabric (ranks, GPUs, collectives, bandwidth) through the same plan before launching."),
    _opt("--preflight-deadline", env="LAUNCHER_PREFLIGHT_DEADLINE", type=float, default=D.preflight.deadline_s,
         help="Seconds a preflight rank may take before it is reported as hung."),
    _opt("--preflight-max-bytes", env="LAUNCHER_PREFLIGHT_MAX_BYTES", type=int, default=D.preflight.max_bytes,
         help="Largest allreduce of the preflight bandwidth sweep."),
    _opt("--canary-model", env="LAUNCHER_CANARY_MODEL", default=D.canary.model,
         help="Model the hang-detecting canary asks while serving (empty: no canary)."),
    _opt("--canary-inputs", env="LAUNCHER_CANARY_INPUTS", default=D.canary.inputs,
         help="The canary request's inputs (KServe v2 JSON list of tensors)."),
    _opt("--canary-interval", env="LAUNCHER_CANARY_INTERVAL", type=float, default=D.canary.interval_s,
         help="Seconds between canaries."),
    _opt("--canary-deadline", env="LAUNCHER_CANARY_DEADLINE", type=float, default=D.canary.deadline_s,
         help="Seconds a canary may wait for its answer."),
    _opt("--canary-misses", env="LAUNCHER_CANARY_MISSES", type=int, default=D.canary.misses,
         help="Canaries in a row without an answer that end the launch (exit 82: hung)."),
    _opt("--startup-timeout", "startup_timeout_s", env="LAUNCHER_STARTUP_TIMEOUT", type=float,
         default=D.startup_timeout_s, help="Seconds rank 0 may take to become ready (large engines load slowly)."),
    _opt("--progress-interval", "progress_interval_s", env="LAUNCHER_PROGRESS_INTERVAL", type=float,
         default=D.progress_interval_s, help="Seconds between startup progress lines (bytes read, rate, ETA)."),
    _opt("--stall-warning", "stall_warning_s", env="LAUNCHER_STALL_WARNING", type=float, default=D.stall_warning_s,
         help="Seconds a loading rank may read nothing before a warning names it."),
    _opt("--drain-delay", "drain_delay_s", env="LAUNCHER_DRAIN_DELAY", type=float, default=D.drain_delay_s,
         help="On SIGTERM while serving: seconds rank 0 keeps taking requests, unready, while endpoints update."),
    _opt("--drain-timeout", "drain_timeout_s", env="LAUNCHER_DRAIN_TIMEOUT", type=float, default=D.drain_timeout_s,
         help="Then: seconds the requests in flight get to finish before the ranks are stopped."),
    _opt("--stop-grace-period", "stop_grace_s", env="LAUNCHER_STOP_GRACE_PERIOD", type=float,
         default=D.stop_grace_s, help="Seconds ranks get to exit after SIGTERM before SIGKILL."),
]

GROUP = [
    _opt("--group-key", "--stateful_set_group_key", "group_key", env="LAUNCHER_GROUP_KEY", default=None,
         help="The LWS group key (leaderworkerset.sigs.k8s.io/group-key) of this pod's group."),
    _opt("--namespace", env="LAUNCHER_NAMESPACE", default=None, help="Namespace of the group's pods."),
    _opt("--group-size", env="LWS_GROUP_SIZE", type=int, default=None,
         help="Pods in the group (LeaderWorkerSet sets LWS_GROUP_SIZE)."),
    _opt("--discovery-timeout", "discovery_timeout_s", env="LAUNCHER_DISCOVERY_TIMEOUT", type=float,
         default=D.discovery_timeout_s, help="Seconds to wait for every pod to be running and reachable."),
    _opt("--lws-name", env="LAUNCHER_LWS_NAME", default=None,
         help="The group's LeaderWorkerSet (label leaderworkerset.sigs.k8s.io/name): Events are recorded on it."),
    _opt("--pod-name", env="LAUNCHER_POD_NAME", default=None, help="This pod's name (downward API), for its Events."),
    _opt("--pod-uid", env="LAUNCHER_POD_UID", default=None, help="This pod's uid (downward API), for its Events."),
    _opt("--on-permanent-error", env="LAUNCHER_ON_PERMANENT_ERROR", type=click.Choice(["park", "exit"]),
         default=D.restart.on_permanent_error,
         help="park: stay alive and unready with the reason (no restart storm); exit: exit with the error."),
    _opt("--restart-window", env="LAUNCHER_RESTART_WINDOW", type=float, default=D.restart.window_s,
         help="Seconds in which earlier failures of the group count for the backoff."),
    _opt("--restart-backoff", env="LAUNCHER_RESTART_BACKOFF", type=float, default=D.restart.backoff_s,
         help="Seconds a transient failure waits before exiting when the group failed once within the window "
              "(doubling with every further failure)."),
    _opt("--restart-backoff-max", env="LAUNCHER_RESTART_BACKOFF_MAX", type=float, default=D.restart.backoff_max_s,
         help="The longest wait before exiting after a transient failure."),
    _opt("--rsh-agent", env="LAUNCHER_RSH_AGENT", default=D.rsh_agent,
         help="MPI remote-launch agent that runs a command in a pod."),
]


def apply(*groups: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for group in reversed(groups):
            for option in reversed(group):
                func = option(func)
        return func

    return decorate


# Options that fill the nested configs: option name -> field
NSYS_OPTIONS = {"nsys": "enabled", "nsys_binary": "binary", "nsys_output": "output_dir", "nsys_trace": "trace"}
PREFLIGHT_OPTIONS = {"preflight": "enabled", "preflight_deadline": "deadline_s", "preflight_max_bytes": "max_bytes"}
RESTART_OPTIONS = {"on_permanent_error": "on_permanent_error", "restart_window": "window_s",
                   "restart_backoff": "backoff_s", "restart_backoff_max": "backoff_max_s"}
CANARY_OPTIONS = {"canary_model": "model", "canary_inputs": "inputs", "canary_interval": "interval_s",
                  "canary_deadline": "deadline_s", "canary_misses": "misses"}
SPECIAL = {"extra_env", "forward_env", "restricted_apis", "nsys", "preflight", "restart", "canary",
           "triton_log_verbose", "iso8601"}


def _api_list(text: str | None) -> tuple[str, ...]:
    if text is None:
        return D.restricted_apis
    return () if text.strip() in ("", "none") else tuple(api.strip() for api in text.split(","))


def build_config(params: dict[str, Any], **overrides: Any) -> LaunchConfig:
    """A validated LaunchConfig from click's parameters (unknown keys ignored; what a command lacks
    keeps the config's default)."""
    values = {k: v for k, v in {**params, **overrides}.items() if v is not None}

    def pick(names: dict[str, str]) -> dict[str, Any]:
        return {field: values[option] for option, field in names.items() if option in values}

    extra_env, passed_on = parse_env_assignments(values.get("extra_env", ()))
    config = dataclasses.replace(
        D,
        **{name: values[name] for name in LaunchConfig.__dataclass_fields__ if name in values and name not in SPECIAL},
        extra_env=extra_env,
        restricted_apis=_api_list(values.get("restricted_apis")),
        forward_env=(tuple(values.get("forward_env", ())) or D.forward_env) + passed_on,
        nsys=dataclasses.replace(D.nsys, **pick(NSYS_OPTIONS)),
        preflight=dataclasses.replace(D.preflight, **pick(PREFLIGHT_OPTIONS)),
        restart=dataclasses.replace(D.restart, **pick(RESTART_OPTIONS)),
        canary=dataclasses.replace(D.canary, **pick(CANARY_OPTIONS)),
        triton_log_verbose=values.get("triton_log_verbose", values.get("verbosity", D.triton_log_verbose)),
        iso8601=bool(values.get("iso8601", D.iso8601)),
    )
    return validate(config)
