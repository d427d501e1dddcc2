"""The pure plan builder: placement, flags of both Open MPI flavours, rank argv."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
from pathlib import Path

import pytest

from kubessh.args import POD_UIDS_ENV, parse
from launcher.config import LaunchConfig, NsysConfig
from launcher.errors import ConfigError
from launcher.plan import (
    ADMIN_KEY_ENV,
    LAUNCH_ID_ENV,
    LaunchPlan,
    Member,
    MpiFlavor,
    TritonCommand,
    build_plan,
    format_plan,
    lws_members,
    order_members,
    parse_mpirun_version,
)

V4 = MpiFlavor(4, 1)
V5 = MpiFlavor(5, 0)


def plan_for(pods: int, gpus: int, flavor: MpiFlavor = V5, **kwargs: object):
    config = LaunchConfig(tp=pods * gpus, pp=1, gpus_per_pod=gpus, **kwargs)  # type: ignore[arg-type]
    members = lws_members("grp", 0, pods)
    return config, build_plan(
        config, members, flavor, triton=TritonCommand("tritonserver"), environ={}, launch_id="id1",
        is_root=False, agent="kubessh" if pods > 1 else None,
    )


def hostfile_pods(plan: LaunchPlan) -> list[tuple[str, int]]:
    return [(line.split()[0], int(line.split("slots=")[1])) for line in plan.hostfile_text.splitlines()]


@pytest.mark.parametrize("flavor", [V4, V5], ids=["ompi4.1", "ompi5"])
@pytest.mark.parametrize("pods", list(range(1, 17)))
def test_one_app_context_runs_every_rank_placed_by_the_hostfile(flavor: MpiFlavor, pods: int) -> None:
    gpus = 2
    config, plan = plan_for(pods, gpus, flavor)
    assert ":" not in plan.argv and "-np" not in plan.argv
    n = plan.argv.index("-n")
    assert plan.argv[n:n + 3] == ("-n", str(pods * gpus), "sh") and plan.argv[-1] == "rank"
    assert plan.argv[plan.argv.index("--hostfile") + 1] == plan.hostfile == "/tmp/launcher-id1.hosts"
    assert hostfile_pods(plan) == [(f"grp-0{'' if p == 0 else f'-{p}'}", gpus) for p in range(pods)]
    assert plan.hosts == tuple(f"{pod}:{slots}" for pod, slots in hostfile_pods(plan))
    assert [(r.pod, r.local_rank) for r in plan.ranks] == [
        (plan.hosts[r // gpus].split(":")[0], r % gpus) for r in range(pods * gpus)
    ]
    for r in plan.ranks:
        assert f"--id=rank{r.rank}" in r.argv
        assert f"--backend-config=python,shm-region-prefix-name=prefix{r.rank}_" in r.argv


@pytest.mark.parametrize("flavor", [V4, V5], ids=["ompi4.1", "ompi5"])
def test_the_command_line_has_one_size_from_2_to_4096_ranks(flavor: MpiFlavor) -> None:
    _, small = plan_for(2, 1, flavor, extra_env={"MY_FLAG": "1"})
    _, large = plan_for(512, 8, flavor, extra_env={"MY_FLAG": "1"})
    assert (len(small.ranks), len(large.ranks), len(large.hosts)) == (2, 4096, 512)
    # word for word the same command but for the rank count
    assert [(a, b) for a, b in zip(small.argv, large.argv, strict=True) if a != b] == [("2", "4096")]


def test_rank_script_runs_exactly_each_ranks_displayed_command(tmp_path: Path) -> None:
    """The script mpirun starts on every rank execs what dry-run shows for that rank, word for word."""
    printer = tmp_path / "print-argv"
    printer.write_text('#!/bin/sh\nfor word in "$0" "$@"; do printf "%s\\0" "$word"; done\n')
    printer.chmod(0o755)
    config = LaunchConfig(tp=4, gpus_per_pod=2, model="it's \"quoted\" $HOME", iso8601=True,
                          nsys=NsysConfig(enabled=True, binary=str(printer), output_dir=str(tmp_path / "o u t")))
    plan = build_plan(config, lws_members("g", 0, 2), V4, triton=TritonCommand(str(printer), "/b dir"),
                      environ={}, launch_id="i", is_root=False, agent="kubessh")
    script = plan.argv[plan.argv.index("-c") + 1]
    for rank in plan.ranks:
        # (the displayed command names the key's variable, which the script expands)
        done = subprocess.run(["sh", "-c", script, "rank"], capture_output=True, check=True,
                              env={"OMPI_COMM_WORLD_RANK": str(rank.rank), ADMIN_KEY_ENV: f"${ADMIN_KEY_ENV}"})
        assert done.stdout.decode().split("\0")[:-1] == list(rank.argv), rank.rank


def test_flavour_specific_agent_flags() -> None:
    _, v4 = plan_for(2, 1, V4)
    _, v5 = plan_for(2, 1, V5)
    assert ["--mca", "plm_rsh_agent", "kubessh"] == list(v4.argv[v4.argv.index("plm_rsh_agent") - 1 :][:3])
    assert ["--mca", "plm_rsh_no_tree_spawn", "1"] == list(v4.argv[v4.argv.index("plm_rsh_no_tree_spawn") - 1 :][:3])
    assert "--prtemca" not in v4.argv
    assert "--noprefix" in v4.argv and "--noprefix" not in v5.argv
    assert ["--prtemca", "plm_ssh_agent", "kubessh"] == list(v5.argv[v5.argv.index("plm_ssh_agent") - 1 :][:3])
    assert "plm_ssh_no_tree_spawn" in v5.argv and "--mca" not in v5.argv
    for plan in (v4, v5):
        assert "--debug-devel" not in plan.argv
        assert plan.argv[plan.argv.index("--bind-to") + 1] == "none"


def test_single_pod_needs_no_agent() -> None:
    _, plan = plan_for(1, 4)
    assert not any("agent" in a for a in plan.argv)
    assert plan.hosts == ("grp-0:4",)


def test_run_as_root_only_when_root() -> None:
    config = LaunchConfig(tp=1)
    members = [Member("a", "a", 0)]
    kwargs = dict(triton=TritonCommand(), environ={}, launch_id="x", agent=None)
    assert "--allow-run-as-root" in build_plan(config, members, V5, is_root=True, **kwargs).argv  # type: ignore[arg-type]
    assert "--allow-run-as-root" not in build_plan(config, members, V5, is_root=False, **kwargs).argv  # type: ignore[arg-type]


def test_rank_zero_serves_and_others_load_the_model_quietly() -> None:
    _, plan = plan_for(2, 2, V5, http_port=9000, grpc_port=9001, metrics_port=9002, model="ensemble_x")
    zero, other = plan.ranks[0].argv, plan.ranks[3].argv
    assert {"--http-port=9000", "--grpc-port=9001", "--metrics-port=9002"} <= set(zero)
    assert not any(a.startswith(("--allow-http", "--model-control-mode", "--load-model")) for a in zero)
    assert {"--allow-http=false", "--allow-grpc=false", "--allow-metrics=false", "--model-control-mode=explicit",
            "--load-model=ensemble_x", "--log-info=false"} <= set(other)
    for argv in (zero, other):
        assert "--disable-auto-complete-config" in argv
        assert "--model-load-thread-count=2" in argv


def test_workers_ordered_by_integer_index() -> None:
    members = lws_members("x", 0, 12)
    shuffled = members[:]
    random.Random(7).shuffle(shuffled)
    ordered = order_members(shuffled)
    assert [m.pod for m in ordered] == ["x-0"] + [f"x-0-{i}" for i in range(1, 12)]
    assert ordered.index(next(m for m in ordered if m.pod == "x-0-10")) > ordered.index(
        next(m for m in ordered if m.pod == "x-0-9")
    )
    config = LaunchConfig(tp=12, gpus_per_pod=1)
    plan = build_plan(config, shuffled, V5, triton=TritonCommand(), environ={}, launch_id="i", is_root=False,
                      agent="kubessh")
    assert hostfile_pods(plan) == [(m.pod, 1) for m in ordered]


def test_duplicate_worker_index_is_refused() -> None:
    with pytest.raises(ConfigError, match="two pods claim one index"):
        order_members([Member("a", "a", 1), Member("b", "b", 1)])


def test_member_count_must_match_world() -> None:
    with pytest.raises(ConfigError, match="needs 2"):
        build_plan(LaunchConfig(tp=4, gpus_per_pod=2), lws_members("x", 0, 3), V5, triton=TritonCommand(),
                   environ={}, launch_id="i", is_root=False, agent="kubessh")


def test_forwarded_environment() -> None:
    config = LaunchConfig(tp=2, gpus_per_pod=1, extra_env={"MY_FLAG": "1"})
    environ = {"NCCL_DEBUG": "INFO", "FI_PROVIDER": "efa", "HOME": "/root", "PATH": "/bin", "NCCLX": "no",
               "CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    plan = build_plan(config, lws_members("x", 0, 2), V4, triton=TritonCommand(), environ=environ,
                      launch_id="abc", is_root=False, agent="kubessh")
    xs = [plan.argv[i + 1] for i, a in enumerate(plan.argv) if a == "-x"]
    assert set(xs) == {"NCCL_DEBUG", "FI_PROVIDER", "PATH", "CUDA_DEVICE_MAX_CONNECTIONS", "MY_FLAG", LAUNCH_ID_ENV,
                       ADMIN_KEY_ENV}
    key = plan.env.pop(ADMIN_KEY_ENV)
    assert plan.env == {"MY_FLAG": "1", LAUNCH_ID_ENV: "abc"} and len(key) == 32  # a random key per launch


@pytest.mark.parametrize("flavor", [V4, V5], ids=["ompi4.1", "ompi5"])
def test_exports_once_before_the_single_app_context(flavor: MpiFlavor) -> None:
    # Open MPI 4.1 applies -x only to the app context it appears in (checked against Debian's mpirun
    # 4.1.4); with one app context, one set of exports reaches every rank under both flavours.
    _, plan = plan_for(3, 2, flavor, extra_env={"MY_FLAG": "1"})
    xs = [i for i, a in enumerate(plan.argv) if a == "-x"]
    assert [plan.argv[i + 1] for i in xs] == ["MY_FLAG", LAUNCH_ID_ENV, ADMIN_KEY_ENV]
    assert max(xs) < plan.argv.index("-n")


def test_nsys_wraps_every_rank() -> None:
    nsys = NsysConfig(enabled=True, binary="/opt/nsys/bin/nsys", output_dir="/out/", trace="cuda,nvtx")
    _, plan = plan_for(1, 2, V5, nsys=nsys)
    for rank in plan.ranks:
        assert rank.argv[:5] == ("/opt/nsys/bin/nsys", "profile", f"--output=/out/local/rank{rank.rank}",
                                 "--trace=cuda,nvtx", "--force-overwrite=true")
        assert rank.argv[5] == "tritonserver"


def test_nsys_reports_are_kept_per_group(tmp_path: Path) -> None:
    """Groups and releases sharing one volume write under their leader's pod name; the directory is made."""
    nsys = NsysConfig(enabled=True, output_dir=str(tmp_path))
    config = LaunchConfig(tp=2, gpus_per_pod=1, nsys=nsys, pod_name="llama-3", lws_name="llama")
    plan = build_plan(config, lws_members("llama", 3, 2), V5, triton=TritonCommand("true", None), environ={},
                      launch_id="i", is_root=False, agent="kubessh")
    assert {rank.argv[2] for rank in plan.ranks} == {f"--output={tmp_path}/llama-3/rank0",
                                                     f"--output={tmp_path}/llama-3/rank1"}
    script = plan.argv[plan.argv.index("-c") + 1]
    subprocess.run(["sh", "-c", script.split("if [")[0], "rank"], env={"OMPI_COMM_WORLD_RANK": "1"}, check=True)
    assert (tmp_path / "llama-3").is_dir()


def test_backend_directory_and_iso8601() -> None:
    config = LaunchConfig(tp=1, iso8601=True, triton_log_verbose=2)
    plan = build_plan(config, [Member("a", "a", 0)], V5, triton=TritonCommand("/t/ts", "/t/backends"), environ={},
                      launch_id="i", is_root=False, agent=None)
    argv = plan.ranks[0].argv
    assert argv[0] == "/t/ts"
    assert {"--backend-directory=/t/backends", "--log-format=ISO8601", "--log-verbose=2"} <= set(argv)


@pytest.mark.parametrize("text,expected", [
    ("mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/", V4),
    ("mpirun (Open MPI) 5.0.11\n", MpiFlavor(5, 0)),
    ("prterun (Open MPI) 5.0.3\n", MpiFlavor(5, 0)),
])
def test_parse_mpirun_version(text: str, expected: MpiFlavor) -> None:
    assert parse_mpirun_version(text) == expected


def test_parse_mpirun_version_refuses_other_mpi() -> None:
    with pytest.raises(ConfigError, match="HYDRA"):
        parse_mpirun_version("HYDRA build details:\n    Version: 4.1")


def test_text_plan_shows_table_and_command() -> None:
    config, plan = plan_for(2, 2, V4)
    text = format_plan(plan, config)
    assert "RANK  POD      GPU  ROLE" in text
    assert "3     grp-0-1  1    model tensorrt_llm" in text
    assert "server http:8000 grpc:8001 metrics:8002" in text
    assert "hostfile /tmp/launcher-id1.hosts:\ngrp-0 slots=2\ngrp-0-1 slots=2\n" in text
    assert f"-x {LAUNCH_ID_ENV} -x {ADMIN_KEY_ENV} -n 4 sh -c " in text
    for rank in plan.ranks:
        assert f"rank {rank.rank}: {shlex.join(rank.argv)}" in text


def test_agent_learns_the_group_from_mpiruns_environment() -> None:
    config = LaunchConfig(tp=2, gpus_per_pod=1, group_key="abc123", namespace="serving")
    plan = build_plan(config, lws_members("x", 0, 2), V5, triton=TritonCommand(), environ={}, launch_id="i",
                      is_root=False, agent="kubessh")
    assert plan.env["LAUNCHER_GROUP_KEY"] == "abc123" and plan.env["LAUNCHER_NAMESPACE"] == "serving"


def test_rank_0_restricts_admin_apis_to_the_key_in_its_environment() -> None:
    plan = build_plan(LaunchConfig(tp=2, gpus_per_pod=1), lws_members("x", 0, 2), V5, triton=TritonCommand(),
                      environ={ADMIN_KEY_ENV: "from-a-secret"}, launch_id="i", is_root=False, agent="kubessh")
    apis = "model-repository,shared-memory,trace,logging"
    assert {f"--http-restricted-api={apis}:admin-key=${ADMIN_KEY_ENV}",
            f"--grpc-restricted-protocol={apis}:admin-key=${ADMIN_KEY_ENV}"} <= set(plan.ranks[0].argv)
    assert not [a for a in plan.ranks[1].argv if "restricted" in a]  # rank 1 serves nothing
    assert plan.env[ADMIN_KEY_ENV] == "from-a-secret" and "from-a-secret" not in " ".join(plan.argv)
    open_plan = build_plan(LaunchConfig(tp=2, gpus_per_pod=1, restricted_apis=()), lws_members("x", 0, 2), V5,
                           triton=TritonCommand(), environ={}, launch_id="i", is_root=False, agent="kubessh")
    assert ADMIN_KEY_ENV not in open_plan.env and "restricted" not in " ".join(open_plan.argv)


def test_the_agent_learns_each_discovered_pods_uid() -> None:
    config = LaunchConfig(tp=2, gpus_per_pod=1, group_key="abc123")
    found = [Member("x-0", "10.0.0.1", 0, "uid-0"), Member("x-0-1", "10.0.0.2", 1, "uid-1")]
    plan = build_plan(config, found, V5, triton=TritonCommand(), environ={}, launch_id="i", is_root=False,
                      agent="kubessh")
    assert json.loads(plan.env[POD_UIDS_ENV]) == {"x-0": "uid-0", "x-0-1": "uid-1"}
    assert parse(["x-0-1", "true"], plan.env).expected_uid == "uid-1"  # what kubessh makes of it
    static = build_plan(config, lws_members("x", 0, 2), V5, triton=TritonCommand(), environ={}, launch_id="i",
                        is_root=False, agent="kubessh")
    assert POD_UIDS_ENV not in static.env  # static hosts: no uid known, none checked
