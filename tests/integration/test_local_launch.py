"""`launcher local` with real mpirun (Open MPI 5 from PyPI), tritonserver and tritonclient."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.cli.local import EXAMPLE_CANARY, EXAMPLE_MODEL
from launcher.errors import ExitCode
from tests.integration.launch import (
    LocalLaunch,
    expected_output,
    infer,
    kill_leftovers,
    launch_env,
    start_local,
    wait_launcher_ready,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def launches(tmp_path: Path) -> Iterator[list[LocalLaunch]]:
    started: list[LocalLaunch] = []
    yield started
    for launch in started:
        kill_leftovers(launch)


@pytest.mark.parametrize("ranks", [2, 4])
def test_every_rank_contributes_to_the_answer(ranks: int, tmp_path: Path, launches: list[LocalLaunch]) -> None:
    launch = start_local(tmp_path, ranks, env=launch_env(LAUNCHER_ADMIN_KEY="k-from-a-secret"))
    launches.append(launch)
    wait_ready(launch.ports.http, launch.proc)
    assert len(launch.rank_processes()) == ranks
    values = [1.0, -2.5, 4.0]
    assert infer(launch.ports.http, values) == (expected_output(values, ranks), ranks)
    assert infer(launch.ports.grpc, [3.0], protocol="grpc") == (expected_output([3.0], ranks), ranks)
    assert_launcher_infer(launch.ports.http)
    assert_admin_apis_need_the_key(launch.ports.http, "k-from-a-secret")
    assert launch.stop() == 0
    assert launch.leftovers() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_leaves_no_process_behind(sig: int, tmp_path: Path, launches: list[LocalLaunch]) -> None:
    launch = start_local(tmp_path, 2, "--log-format=json")
    launches.append(launch)
    wait_ready(launch.ports.http, launch.proc)
    wait_launcher_ready(launch.ports.health)
    before = launch.leftovers()
    assert len(before) >= 4  # two tritonserver ranks and their python stubs
    started = time.monotonic()
    code = launch.stop(sig)
    elapsed = time.monotonic() - started
    assert code == 0, launch.log.read_text()
    assert launch.leftovers() == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in before)
    assert elapsed < 15, f"stop took {elapsed:.1f}s"
    events = [json.loads(line) for line in launch.log.read_text().splitlines() if line.startswith('{"time"')]
    messages = [e["message"] for e in events if e["logger"].startswith("launcher")]
    assert any(m.startswith("rank 0 ready after") for m in messages)
    assert messages[-1].startswith("launch stopped in")


def test_killed_rank_stops_the_leader_with_an_error(tmp_path: Path, launches: list[LocalLaunch]) -> None:
    launch = start_local(tmp_path, 2)
    launches.append(launch)
    wait_ready(launch.ports.http, launch.proc)
    victim = next(p for p in launch.rank_processes() if "--id=rank1" in p.cmdline())
    victim.kill()
    started = time.monotonic()
    code = launch.proc.wait(timeout=30)
    assert time.monotonic() - started < 10
    assert code == ExitCode.RANK_LOST, launch.log.read_text()
    assert launch.leftovers() == []


def test_startup_timeout_is_reported(tmp_path: Path, launches: list[LocalLaunch]) -> None:
    launch = start_local(tmp_path, 2, "--startup-timeout=0.5")
    launches.append(launch)
    code = launch.proc.wait(timeout=60)
    assert code == 77, launch.log.read_text()
    assert "rank 0 was not ready after" in launch.log.read_text()
    assert launch.leftovers() == []


def test_missing_nsys_is_reported_before_anything_starts(tmp_path: Path) -> None:
    launch = start_local(tmp_path, 2, "--nsys", "--nsys-binary=/no/nsys")
    assert launch.proc.wait(timeout=30) == 69
    assert "--nsys-binary=/no/nsys: Nsight Systems not found" in launch.log.read_text()
    assert launch.leftovers() == []


def assert_launcher_infer(port: int) -> None:
    """`launcher infer` (the chart's helm test) against real Triton: a good answer passes, a refusal fails."""
    def run(model: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "launcher", "infer", f"--url=127.0.0.1:{port}",
                               f"--model={model}", f"--inputs={EXAMPLE_CANARY}"], capture_output=True, text=True)
    good, missing = run(EXAMPLE_MODEL), run("no_such_model")
    assert (good.returncode, good.stdout) == (0, f"{EXAMPLE_MODEL} answered: OUTPUT FP32[1], RANKS INT32[1]\n"), good
    assert missing.returncode == ExitCode.NO_ANSWER and missing.stderr.count("\n") == 1, missing
    assert "no_such_model refused the inference (404" in missing.stderr


def assert_admin_apis_need_the_key(port: int, key: str) -> None:
    """Rank 0's model-repository API (load/unload: code from the repository) refuses a request without the
    admin key (real Triton, --http-restricted-api); health and inference stay open."""
    def index(*headers: tuple[str, str]) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/v2/repository/index", headers=dict(headers))
        status = connection.getresponse().status
        connection.close()
        return status

    assert index() == 403 and index(("admin-key", "guess")) == 403
    assert index(("admin-key", key)) == 200
