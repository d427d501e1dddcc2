"""Launch configuration: one immutable value, validated before anything starts.

Validation is pure (no I/O) so every rule is unit tested; the checks that read
the filesystem live in ``model_repository.py``. Each broken rule raises a
``ConfigError`` whose message names the value, the rule and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

DEFAULT_MODEL = "tensorrt_llm"
DEFAULT_FORWARD_PREFIXES = (
    "NCCL_",
    "FI_",
    "RDMAV_",
    "UCX_",
    "CUDA_",
    "TRTLLM_",
    "TLLM_",
    "LD_LIBRARY_PATH",
    "PATH",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclasses.dataclass(frozen=True)
class NsysConfig:
    """Optional Nsight Systems wrapper around every rank."""

    enabled: bool = False
    binary: str = "nsys"
    output_dir: str = "/tmp/nsys"
    trace: str = "cuda,nvtx,osrt,mpi"


@dataclasses.dataclass(frozen=True)
class PreflightConfig:
    """Optional fabric check run through the same plan before tritonserver."""

    enabled: bool = False
    deadline_s: float = 120.0
    max_bytes: int = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class CanaryConfig:
    """Hang detection while serving (canary.py); off without a model."""

    model: str = ""
    inputs: str = "[]"  # the KServe v2 request's "inputs", as JSON
    interval_s: float = 30.0
    deadline_s: float = 10.0
    misses: int = 3


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """What a failed launch in Kubernetes does next (see failures.py)."""

    on_permanent_error: str = "park"  # park (stay alive and unready) or exit
    window_s: float = 600.0  # failures this recent count for the backoff
    backoff_s: float = 10.0  # the wait after the second failure in the window, doubling after
    backoff_max_s: float = 300.0

    def delay(self, earlier: int) -> float:
        """Seconds to wait before exiting after ``earlier`` failures within the window: none for the
        first failure, then ``backoff_s`` doubling up to ``backoff_max_s``."""
        if earlier <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (earlier - 1)))


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    tp: int = 1
    pp: int = 1
    gpus_per_pod: int = 1
    model_repo: Path = Path("/var/run/models")
    model: str = DEFAULT_MODEL
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    health_port: int = 8080
    group_size: int | None = None  # LWS_GROUP_SIZE, when LWS provides it
    group_key: str | None = None
    namespace: str | None = None
    lws_name: str | None = None  # the LeaderWorkerSet (Events are recorded on it)
    pod_name: str | None = None  # this pod (downward API), for its Events
    pod_uid: str | None = None
    nsys: NsysConfig = NsysConfig()
    preflight: PreflightConfig = PreflightConfig()
    restart: RestartPolicy = RestartPolicy()
    canary: CanaryConfig = CanaryConfig()
    triton_log_verbose: int = 0
    iso8601: bool = False
    model_load_threads: int = 2
    # Rank 0's Triton APIs that answer only requests carrying the admin key (plan.ADMIN_KEY_ENV): loading
    # models, shared memory, trace and log settings are no business of an inference client.
    restricted_apis: tuple[str, ...] = ("model-repository", "shared-memory", "trace", "logging")
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    forward_env: tuple[str, ...] = DEFAULT_FORWARD_PREFIXES
    startup_timeout_s: float = 1800.0
    progress_interval_s: float = 10.0  # between startup progress lines
    stall_warning_s: float = 120.0  # a loading rank that read no byte this long is named in a warning
    drain_delay_s: float = 0.0  # after SIGTERM, rank 0 keeps taking requests this long (endpoints propagate)
    drain_timeout_s: float = 30.0  # then the requests in flight get this long to finish
    stop_grace_s: float = 10.0
    discovery_timeout_s: float = 600.0
    mpirun: str = "mpirun"
    tritonserver: str = "tritonserver"
    rsh_agent: str = "kubessh"

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def pods(self) -> int:
        return self.world_size // self.gpus_per_pod


DEFAULTS = LaunchConfig()  # the one source of every default (the CLI's options show these)


def _fail(value: str, rule: str, fix: str) -> ConfigError:
    return ConfigError(f"{value}: {rule}; {fix}")


def _require_positive(name: str, flag: str, env: str, value: float) -> None:
    if value <= 0:
        raise _fail(f"{flag}={value}", f"{name} must be positive", f"set {flag} (or {env}) to 1 or more")


def validate(config: LaunchConfig) -> LaunchConfig:
    """Check every rule that needs no I/O; return the config unchanged."""
    _require_positive("the tensor-parallel size", "--tp", "LAUNCHER_TP", config.tp)
    _require_positive("the pipeline-parallel size", "--pp", "LAUNCHER_PP", config.pp)
    _require_positive("the GPU count per pod", "--gpus-per-pod", "LAUNCHER_GPUS_PER_POD", config.gpus_per_pod)
    if config.world_size % config.gpus_per_pod:
        raise _fail(
            f"--gpus-per-pod={config.gpus_per_pod}",
            f"the world size tp*pp={config.tp}*{config.pp}={config.world_size} "
            "must be a multiple of the GPUs per pod",
            "choose tp, pp and --gpus-per-pod so that every pod is full",
        )
    if config.group_size is not None and config.group_size != config.pods:
        raise _fail(
            f"LWS_GROUP_SIZE={config.group_size}",
            f"the group has {config.group_size} pods but tp*pp/gpus-per-pod="
            f"{config.world_size}/{config.gpus_per_pod} needs {config.pods}",
            "make the LeaderWorkerSet size equal to tp*pp/gpus-per-pod",
        )
    if not _MODEL_NAME.match(config.model):
        raise _fail(
            f"--model={config.model!r}",
            "a model name is one directory name of the model repository",
            "give the name of the model's directory, e.g. tensorrt_llm",
        )
    _validate_ports(config)
    _validate_env(config)
    _validate_restricted_apis(config.restricted_apis)
    _require_positive("the model load thread count", "--model-load-threads", "LAUNCHER_MODEL_LOAD_THREADS",
                      config.model_load_threads)
    _require_positive("the startup timeout", "--startup-timeout", "LAUNCHER_STARTUP_TIMEOUT",
                      config.startup_timeout_s)
    _require_positive("the progress interval", "--progress-interval", "LAUNCHER_PROGRESS_INTERVAL",
                      config.progress_interval_s)
    _require_positive("the stall warning time", "--stall-warning", "LAUNCHER_STALL_WARNING", config.stall_warning_s)
    _require_positive("the discovery timeout", "--discovery-timeout", "LAUNCHER_DISCOVERY_TIMEOUT",
                      config.discovery_timeout_s)
    _require_positive("the preflight deadline", "--preflight-deadline", "LAUNCHER_PREFLIGHT_DEADLINE",
                      config.preflight.deadline_s)
    _require_positive("the preflight's largest size", "--preflight-max-bytes", "LAUNCHER_PREFLIGHT_MAX_BYTES",
                      config.preflight.max_bytes)
    _require_positive("the restart window", "--restart-window", "LAUNCHER_RESTART_WINDOW", config.restart.window_s)
    _require_positive("the restart backoff", "--restart-backoff", "LAUNCHER_RESTART_BACKOFF",
                      config.restart.backoff_s)
    if config.restart.backoff_max_s < config.restart.backoff_s:
        raise _fail(f"--restart-backoff-max={config.restart.backoff_max_s:g}",
                    f"the longest backoff cannot be shorter than the first (--restart-backoff="
                    f"{config.restart.backoff_s:g})", "raise --restart-backoff-max or lower --restart-backoff")
    _validate_canary(config.canary)
    if config.drain_delay_s < 0:
        raise _fail(f"--drain-delay={config.drain_delay_s:g}", "the drain delay cannot be negative",
                    "set it to 0 or more seconds")
    _require_positive("the drain timeout", "--drain-timeout", "LAUNCHER_DRAIN_TIMEOUT", config.drain_timeout_s)
    if config.stop_grace_s < 0:
        raise _fail(f"--stop-grace-period={config.stop_grace_s}", "the grace period cannot be negative",
                    "set it to 0 or more seconds")
    if config.triton_log_verbose < 0:
        raise _fail(f"--triton-log-verbose={config.triton_log_verbose}", "the verbosity cannot be negative",
                    "set it to 0 or more")
    return config


def check_range(flag: str, value: int, low: int, high: int, what: str) -> int:
    """``value`` if ``low <= value <= high``, else the one-line error naming ``flag``."""
    if not low <= value <= high:
        raise _fail(f"{flag}={value}", f"{what} must be between {low} and {high}", f"choose another {flag}")
    return value


def _validate_canary(canary: CanaryConfig) -> None:
    if not canary.model:
        return
    if not _MODEL_NAME.match(canary.model):
        raise _fail(f"--canary-model={canary.model!r}", "a model name is one directory name of the model repository",
                    "give the name of the model the canary asks")
    try:
        inputs = json.loads(canary.inputs)
    except ValueError as exc:
        raise _fail(f"--canary-inputs={canary.inputs!r}", f"not JSON ({exc})",
                    'write the request\'s inputs, e.g. [{"name": "INPUT", "datatype": "FP32", "shape": [1], '
                    '"data": [1.0]}]') from None
    if not isinstance(inputs, list) or not inputs:
        raise _fail(f"--canary-inputs={canary.inputs!r}", "the inputs are a non-empty JSON list of tensors",
                    "write the inputs of one KServe v2 inference request")
    _require_positive("the canary interval", "--canary-interval", "LAUNCHER_CANARY_INTERVAL", canary.interval_s)
    _require_positive("the canary deadline", "--canary-deadline", "LAUNCHER_CANARY_DEADLINE", canary.deadline_s)
    _require_positive("the canary misses", "--canary-misses", "LAUNCHER_CANARY_MISSES", canary.misses)
    if canary.deadline_s >= canary.interval_s:
        raise _fail(f"--canary-deadline={canary.deadline_s:g}",
                    f"the deadline must be shorter than the interval ({canary.interval_s:g}s): canaries never "
                    "overlap",
                    "lower --canary-deadline or raise --canary-interval")


def _validate_ports(config: LaunchConfig) -> None:
    ports = {
        "--http-port": config.http_port,
        "--grpc-port": config.grpc_port,
        "--metrics-port": config.metrics_port,
        "--health-port": config.health_port,
    }
    for flag, port in ports.items():
        check_range(flag, port, 1, 65535, "a port")
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise _fail(
                f"{flag}={port}",
                f"the port is already taken by {seen[port]}",
                "give every endpoint its own port",
            )
        seen[port] = flag


def _validate_env(config: LaunchConfig) -> None:
    for name in config.extra_env:
        if not _ENV_NAME.match(name):
            raise _fail(f"--env {name!r}", "an environment variable name is letters, digits and _",
                        "write --env NAME=VALUE")
    for name in config.forward_env:
        if not _ENV_NAME.match(name):
            raise _fail(f"--forward-env {name!r}", "a forwarded name or prefix is letters, digits and _",
                        "write --forward-env NAME or --forward-env PREFIX_")


TRITON_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
               "trace", "logging")


def _validate_restricted_apis(apis: tuple[str, ...]) -> None:
    for api in apis:
        if api not in TRITON_APIS:
            raise _fail(f"--restricted-apis {api!r}", f"Triton's APIs are {', '.join(TRITON_APIS)}",
                        "name those that need the admin key, comma-separated, or none")
    if "health" in apis or "inference" in apis:
        raise _fail(f"--restricted-apis={','.join(apis)}", "health and inference serve probes and clients",
                    "leave them out")


def parse_env_assignments(items: tuple[str, ...] | list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """``NAME=VALUE`` words as a mapping, and bare ``NAME`` words: variables passed on from this
    environment (a Secret's value stays out of the command line)."""
    values: dict[str, str] = {}
    names: list[str] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise _fail(f"--env {item!r}", "extra environment is given as NAME=VALUE or NAME",
                        "write --env NAME=VALUE, or --env NAME to pass on this environment's NAME")
        if sep:
            values[name] = value
        elif _ENV_NAME.match(name):
            names.append(name)
        else:
            raise _fail(f"--env {item!r}", "a variable name is letters, digits and _, not starting with a digit",
                        "write --env NAME=VALUE, or --env NAME to pass on this environment's NAME")
    return values, tuple(names)
