"""`launcher preflight` and `--preflight` through real mpirun, on one machine and across pods."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.integration.launch import launch_env, start_local
from tests.podnet import AGENT, Pod, PodNetwork

pytestmark = pytest.mark.integration

SMALL = "--preflight-max-bytes=1048576"


def preflight(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
              timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    argv = [*(prefix or []), str(VENV_BIN / "launcher"), "preflight", SMALL, "--output=json", *args]
    started = time.monotonic()
    done = subprocess.run(argv, env=env or launch_env(), capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def test_local_preflight_passes_and_reports_every_rank() -> None:
    done, _ = preflight("--hosts=localhost", "--tp=3", "--gpus-per-pod=3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["problems"] == []
    assert [(r["rank"], r["local_rank"], r["stage"]) for r in report["ranks"]] == [(i, i, "done") for i in range(3)]
    assert [s["bytes"] for s in report["sweeps"]["mpi"]] == [4096, 65536, 1048576]
    assert all(s["busbw"] > 0 for s in report["sweeps"]["mpi"])
    assert [link["peer"] for link in report["links"]] == [1, 2]


def test_failing_rank_is_named() -> None:
    done, _ = preflight("--hosts=localhost", "--tp=3", "--gpus-per-pod=3", "--env=LAUNCHER_PREFLIGHT_FAIL_RANK=2")
    assert done.returncode == 80
    report = json.loads(done.stdout)
    failed = "rank 2 (pod localhost): failed in start: failing on purpose (LAUNCHER_PREFLIGHT_FAIL_RANK)"
    assert failed in report["problems"]


def test_local_with_failed_preflight_never_starts_triton(tmp_path: Path) -> None:
    launch = start_local(tmp_path, 2, "--preflight", SMALL, "--env=LAUNCHER_PREFLIGHT_FAIL_RANK=1")
    assert launch.proc.wait(timeout=120) == 80
    text = launch.log.read_text()
    assert "preflight FAILED" in text and "rank 1 (pod localhost)" in text
    assert "tritonserver" not in " ".join(p.name() for p in launch.leftovers())
    assert "mpirun started" not in text


@pytest.mark.sandbox
def test_preflight_across_pods(pods: tuple[PodNetwork, Pod, Pod]) -> None:
    net, pod0, _ = pods
    done, _ = preflight("--hosts=pod0,pod1", "--tp=4", "--gpus-per-pod=2", f"--rsh-agent={AGENT}",
                        env=launch_env(**net.env()), prefix=pod0.exec_argv([]))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["pod"], r["host"], r["local_rank"]) for r in report["ranks"]] == [
        ("pod0", "pod0", 0), ("pod0", "pod0", 1), ("pod1", "pod1", 0), ("pod1", "pod1", 1)]


@pytest.mark.sandbox
def test_cut_network_names_the_pods_ranks_within_the_deadline(pods: tuple[PodNetwork, Pod, Pod]) -> None:
    net, pod0, pod1 = pods
    subprocess.run(pod1.exec_argv(["ip", "link", "set", "eth0", "down"]), check=True)
    deadline = 5
    done, elapsed = preflight("--hosts=pod0,pod1", "--tp=4", "--gpus-per-pod=2", f"--rsh-agent={AGENT}",
                              f"--preflight-deadline={deadline}", env=launch_env(**net.env()),
                              prefix=pod0.exec_argv([]))
    assert done.returncode == 80, done.stdout + done.stderr
    problems = json.loads(done.stdout)["problems"]
    assert problems == ["pod pod1 (ranks 2, 3): its MPI daemon did not start or could not reach the leader "
                        "(check the pod's network and the agent)"]
    assert elapsed < deadline + 20
