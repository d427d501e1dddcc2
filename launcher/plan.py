"""The launch plan: a pure function from configuration and group to argv.

``build_plan`` decides everything mpirun will do (hosts, rank placement,
agent, forwarded environment, each rank's tritonserver command line) and does
no I/O, so `launcher dry-run` prints exactly what the leader executes.

mpirun's command line has the same size for 2 ranks as for 4096: the hosts
go in a hostfile, and one app context of ``-n <world>`` runs a short shell
script that picks each rank's command from its rank number
(``OMPI_COMM_WORLD_RANK``) and execs it, so the rank process is the command
itself. One app context also means one set of ``-x`` exports for both Open
MPI flavours (4.1 scopes ``-x`` to the app context it is given in).

Placement: ranks are mapped by slot over hosts ordered by worker index, so
rank r runs in pod r // gpus_per_pod with local rank r % gpus_per_pod, and the
local rank is the GPU it uses (Open MPI exports it as
OMPI_COMM_WORLD_LOCAL_RANK; TensorRT-LLM and the toy model select
``cuda:<local rank>``). CUDA_VISIBLE_DEVICES is left whole so that ranks of one
pod keep peer access to each other's GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubessh.args import POD_UIDS_ENV

from .config import LaunchConfig
from .errors import ConfigError

LAUNCH_ID_ENV = "LAUNCHER_LAUNCH_ID"
MPI_LAUNCHERS = ("mpirun", "orterun", "prterun", "orted", "prted")  # the processes that start ranks
# Which GPUs a pod has is the pod's own business (the device plugin decides):
# never copy the leader's view onto other pods.
POD_LOCAL_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


@dataclasses.dataclass(frozen=True)
class Member:
    """One pod of the group."""

    pod: str
    address: str
    worker_index: int
    uid: str = dataclasses.field(default="", compare=False)  # from the API, for kubessh to check; not who it is


@dataclasses.dataclass(frozen=True)
class MpiFlavor:
    """The Open MPI release mpirun belongs to; 4.x and 5.x differ in flags."""

    major: int
    minor: int

    @property
    def is_v5(self) -> bool:
        return self.major >= 5

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclasses.dataclass(frozen=True)
class TritonCommand:
    """How to start tritonserver on every rank."""

    binary: str = "tritonserver"
    backend_directory: str | None = None


@dataclasses.dataclass(frozen=True)
class Rank:
    rank: int
    pod: str
    address: str
    local_rank: int
    argv: tuple[str, ...]

    @property
    def serves_endpoints(self) -> bool:
        return self.rank == 0


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    flavor: MpiFlavor
    hosts: tuple[str, ...]  # pod:slots, in worker-index order
    ranks: tuple[Rank, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str]  # set in mpirun's own environment
    forwarded: tuple[str, ...]  # names passed on to every rank with -x
    hostfile: str  # the path argv names; its content is ``hostfile_text``

    @property
    def hostfile_text(self) -> str:
        return "".join(f"{pod} slots={slots}\n" for pod, _, slots in (h.rpartition(":") for h in self.hosts))

    def to_dict(self, show_values: bool = False) -> dict[str, Any]:
        return {
            "mpi": str(self.flavor),
            "hosts": list(self.hosts),
            "hostfile": {"path": self.hostfile, "content": self.hostfile_text},
            "ranks": [
                {
                    "rank": r.rank,
                    "pod": r.pod,
                    "address": r.address,
                    "local_rank": r.local_rank,
                    "gpu": r.local_rank,
                    "role": "server" if r.serves_endpoints else "model",
                    "argv": list(r.argv),
                }
                for r in self.ranks
            ],
            "argv": list(self.argv),
            "env": shown_env(self.env, show_values),
            "forwarded": list(self.forwarded),
        }


_VERSION = re.compile(r"\(Open MPI\)\s+(\d+)\.(\d+)")


def parse_mpirun_version(text: str) -> MpiFlavor:
    """Read the flavour from ``mpirun --version`` output."""
    match = _VERSION.search(text)
    if not match:
        first = text.strip().splitlines()[0] if text.strip() else "(no output)"
        raise ConfigError(
            f"mpirun --version printed {first!r}: only Open MPI 4.1 and 5.x are supported; "
            "put Open MPI's mpirun first on PATH or pass --mpirun"
        )
    return MpiFlavor(int(match.group(1)), int(match.group(2)))


def order_members(members: Iterable[Member]) -> list[Member]:
    """Order pods by worker index as an integer (x-0-10 after x-0-9)."""
    ordered = sorted(members, key=lambda m: m.worker_index)
    indexes = [m.worker_index for m in ordered]
    if len(set(indexes)) != len(indexes):
        raise ConfigError(f"worker indexes {indexes}: two pods claim one index; each pod needs its own")
    return ordered


def lws_members(lws_name: str, group_index: int, pods: int) -> list[Member]:
    """The pod names LeaderWorkerSet gives group ``group_index`` (leader NAME-I, workers NAME-I-J)."""
    leader = f"{lws_name}-{group_index}"
    return [Member(leader, leader, 0)] + [
        Member(f"{leader}-{i}", f"{leader}-{i}", i) for i in range(1, pods)
    ]


RANK_VAR = "OMPI_COMM_WORLD_RANK"  # set by Open MPI 4.1 and 5 for every rank
_RANK = "\0rank\0"  # stands for the rank number in a command that the rank script fills in
ADMIN_KEY_ENV = "LAUNCHER_ADMIN_KEY"  # the restricted APIs' key: in the environment, never in an argv
ADMIN_KEY_HEADER = "admin-key"
_ADMIN_KEY = "\0key\0"  # stands for the key, which the rank script reads from its environment
_EXPANSIONS = {_RANK: '"$r"', _ADMIN_KEY: f'"${ADMIN_KEY_ENV}"'}
_PLACEHOLDER = re.compile("(\0rank\0|\0key\0)")


def rank_argv(config: LaunchConfig, triton: TritonCommand, rank: int) -> tuple[str, ...]:
    """The tritonserver command line of one rank (with the nsys wrapper if enabled)."""
    return _triton_words(config, triton, str(rank), serves=rank == 0, key=f"${ADMIN_KEY_ENV}")


def nsys_report_dir(config: LaunchConfig) -> str:
    """Reports of one group: <output>/<leader pod name>, so groups and releases sharing a volume never collide."""
    return f"{config.nsys.output_dir.rstrip('/')}/{config.pod_name or 'local'}"


def _triton_words(config: LaunchConfig, triton: TritonCommand, rank: str, serves: bool,
                  key: str = _ADMIN_KEY) -> tuple[str, ...]:
    argv = [
        triton.binary,
        f"--model-repository={config.model_repo}",
        f"--id=rank{rank}",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
        f"--model-load-thread-count={config.model_load_threads}",
        f"--log-verbose={config.triton_log_verbose}",
        f"--exit-timeout-secs={max(1, round(config.drain_timeout_s))}",  # requests in flight at a stop
    ]
    if triton.backend_directory:
        argv.append(f"--backend-directory={triton.backend_directory}")
    if config.iso8601:
        argv.append("--log-format=ISO8601")
    if serves:
        argv += [
            f"--http-port={config.http_port}",
            f"--grpc-port={config.grpc_port}",
            f"--metrics-port={config.metrics_port}",
        ]
        if config.restricted_apis:
            apis = ",".join(config.restricted_apis)
            argv += [f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={key}",
                     f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={key}"]
    else:
        argv += [
            "--allow-http=false",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--model-control-mode=explicit",
            f"--load-model={config.model}",
            "--log-info=false",
        ]
    if config.nsys.enabled:
        argv = [
            config.nsys.binary,
            "profile",
            f"--output={nsys_report_dir(config)}/rank{rank}",
            f"--trace={config.nsys.trace}",
            "--force-overwrite=true",
        ] + argv
    return tuple(argv)


def _shell_words(argv: Sequence[str]) -> str:
    """``argv`` as one shell command line in which each placeholder reads its variable."""
    return " ".join("".join(_EXPANSIONS.get(part) or shlex.quote(part) for part in _PLACEHOLDER.split(word) if part)
                    or "''" for word in argv)


def rank_script(config: LaunchConfig, triton: TritonCommand, program: tuple[str, ...] | None) -> str:
    """The shell script every rank runs: exec this rank's command (rank 0 serves the endpoints)."""
    if program is not None:
        return f"exec {_shell_words(program)}"
    serve = _shell_words(_triton_words(config, triton, _RANK, serves=True))
    model = _shell_words(_triton_words(config, triton, _RANK, serves=False))
    mkdir = f"mkdir -p {shlex.quote(nsys_report_dir(config))}; " if config.nsys.enabled else ""
    return f'r="${RANK_VAR}"; {mkdir}if [ "$r" = 0 ]; then exec {serve}; fi; exec {model}'


def forwarded_names(config: LaunchConfig, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Names of this environment that match the forwarded names or prefixes."""
    names = {
        name
        for name in environ
        for wanted in config.forward_env
        if (name == wanted or (wanted.endswith("_") and name.startswith(wanted))) and name not in POD_LOCAL_ENV
    }
    return tuple(sorted(names))


def agent_env(config: LaunchConfig, members: Sequence[Member]) -> dict[str, str]:
    """What the agent (kubessh) reads from mpirun's environment: the group it may enter, and the uid of
    each pod discovery found (kubessh enters only those pods, only while they are those pods)."""
    env = {}
    if config.group_key:
        env["LAUNCHER_GROUP_KEY"] = config.group_key
    if config.namespace:
        env["LAUNCHER_NAMESPACE"] = config.namespace
    if members and all(m.uid for m in members):
        env[POD_UIDS_ENV] = json.dumps({m.pod: m.uid for m in members}, separators=(",", ":"))
    return env


def _mpirun_options(flavor: MpiFlavor, agent: str | None, is_root: bool) -> list[str]:
    options = ["--allow-run-as-root"] if is_root else []
    options += ["--bind-to", "none", "--map-by", "slot"]
    if not flavor.is_v5:
        # Open MPI 4.1 built with a default prefix (Debian's) puts <prefix>/bin
        # first on every rank's PATH, so the python backend would pick the
        # system python3 over the one the forwarded PATH names.
        options.append("--noprefix")
    if agent is None:
        return options
    # No tree spawn: every daemon is started by the leader's own agent call,
    # so no daemon depends on another pod's exec stream staying open.
    if flavor.is_v5:
        options += ["--prtemca", "plm_ssh_agent", agent, "--prtemca", "plm_ssh_no_tree_spawn", "1"]
    else:
        options += ["--mca", "plm_rsh_agent", agent, "--mca", "plm_rsh_no_tree_spawn", "1"]
    return options


def build_plan(
    config: LaunchConfig,
    members: Sequence[Member],
    flavor: MpiFlavor,
    *,
    triton: TritonCommand,
    environ: Mapping[str, str],
    launch_id: str,
    is_root: bool,
    agent: str | None,
    program: tuple[str, ...] | None = None,
    hostfile: str | None = None,
) -> LaunchPlan:
    """Everything mpirun needs; ``agent`` is None when every rank is local.

    ``program`` replaces tritonserver as what every rank runs (preflight). ``hostfile`` is where the
    launch writes ``LaunchPlan.hostfile_text`` (default: /tmp, named after the launch id)."""
    ordered = order_members(members)
    if len(ordered) != config.pods:
        raise ConfigError(
            f"{len(ordered)} pods ({', '.join(m.pod for m in ordered)}): tp*pp/gpus-per-pod="
            f"{config.world_size}/{config.gpus_per_pod} needs {config.pods}; give one host per pod"
        )
    g = config.gpus_per_pod
    ranks = tuple(
        Rank(r, ordered[r // g].pod, ordered[r // g].address, r % g, program or rank_argv(config, triton, r))
        for r in range(config.world_size)
    )
    hosts = tuple(f"{m.pod}:{g}" for m in ordered)
    forwarded = forwarded_names(config, environ) + tuple(sorted(config.extra_env)) + (LAUNCH_ID_ENV,)
    keyed = {ADMIN_KEY_ENV: environ.get(ADMIN_KEY_ENV) or secrets.token_hex(16)} if config.restricted_apis else {}
    forwarded += tuple(keyed)
    forwarded = tuple(dict.fromkeys(forwarded))
    hostfile = hostfile or f"/tmp/launcher-{launch_id}.hosts"
    argv = (config.mpirun, *_mpirun_options(flavor, agent, is_root), "--hostfile", hostfile,
            *(word for name in forwarded for word in ("-x", name)),
            "-n", str(config.world_size), "sh", "-c", rank_script(config, triton, program), "rank")
    env = {**config.extra_env, **agent_env(config, ordered), LAUNCH_ID_ENV: launch_id, **keyed}
    return LaunchPlan(flavor, hosts, ranks, argv, env, forwarded, hostfile)


def shown_env(env: Mapping[str, str], show_values: bool) -> dict[str, str]:
    """The environment mpirun sets, values hidden unless asked: they may be credentials."""
    return dict(env) if show_values else {name: "<hidden>" for name in env}


def format_plan(plan: LaunchPlan, config: LaunchConfig, show_values: bool = False) -> str:
    """A table of ranks, the hostfile, mpirun's exact command, then every rank's command."""
    rows = [("RANK", "POD", "GPU", "ROLE")]
    for r in plan.ranks:
        role = (
            f"server http:{config.http_port} grpc:{config.grpc_port} metrics:{config.metrics_port}"
            if r.serves_endpoints
            else f"model {config.model}"
        )
        rows.append((str(r.rank), r.pod, str(r.local_rank), role))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3] for row in rows
    ]
    lines += ["", f"Open MPI {plan.flavor}; hostfile {plan.hostfile}:", plan.hostfile_text.rstrip(), ""]
    env = shown_env(plan.env, show_values)
    lines += [f"{k}={shlex.quote(v) if show_values else v}" for k, v in sorted(env.items())]
    lines.append(shlex.join(plan.argv))
    lines += ["", "each rank runs:"] + [f"rank {r.rank}: {shlex.join(r.argv)}" for r in plan.ranks]
    return "\n".join(lines)
