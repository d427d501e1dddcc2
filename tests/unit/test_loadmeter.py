"""Measuring a load on this machine, and a worker's figures crossing HTTP to the leader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.loadmeter import GpuMeter, PodFigures, RankMeter, parse_pod_figures, rank_roots_under, rchar
from launcher.observability import HealthServer
from launcher.startup import fetch_pod_figures
from launcher.worker import WorkerAgent
from tests.conftest import free_port, http_get

MiB = 2**20
# A rank whose child (as Triton's python backend stub) reads the weights, then both wait to be killed.
RANK = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import sys, time\\n"
                          "with open(sys.argv[1], 'rb') as f:\\n    while f.read(65536): pass\\n"
                          "print('read', flush=True)\\ntime.sleep(60)", sys.argv[1]], stdout=sys.stdout)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def rank(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process carrying MPI rank 5 whose child has read a 3 MiB file."""
    weights = tmp_path / "weights"
    weights.write_bytes(os.urandom(3 * MiB))
    proc = subprocess.Popen([sys.executable, "-c", RANK, str(weights)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMPI_COMM_WORLD_RANK": "5"})
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert proc.stdout.readline() == "read\n"
    yield proc, 3 * MiB
    os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()


def test_a_ranks_bytes_include_its_childrens(rank: tuple[subprocess.Popen[str], int]) -> None:
    proc, size = rank
    assert rchar(proc.pid) < size  # the rank itself read little: its child read the weights
    meter = RankMeter()
    first = meter.sample([proc.pid])
    assert list(first) == [5] and size <= first[5] < size + 16 * MiB  # plus the interpreter's own reads
    assert meter.sample([proc.pid])[5] >= first[5]


def test_a_process_without_a_rank_is_not_measured() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK")}
    proc = subprocess.Popen(["sleep", "30"], env=env)
    try:
        assert RankMeter().sample([proc.pid]) == {}
    finally:
        proc.kill()
        proc.wait()


def test_a_rank_seen_before_its_exec_is_recognised_after_it() -> None:
    """MPI forks, then execs the rank with its variables: a look in between must not hide the rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK")}
    script = ("import os, sys, time; time.sleep(0.5); os.execve(sys.executable, [sys.executable, '-c', "
              "'import time; time.sleep(30)'], {**os.environ, 'OMPI_COMM_WORLD_RANK': '4'})")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        meter = RankMeter()
        assert meter.rank_of(proc.pid) is None
        time.sleep(1.5)
        assert meter.rank_of(proc.pid) == 4
    finally:
        proc.kill()
        proc.wait()


def test_ranks_are_the_children_of_mpi_launchers() -> None:
    table = {1: (0, "init"), 10: (1, "launcher"), 11: (10, "mpirun"), 12: (11, "sh"), 13: (11, "tritonserver"),
             14: (13, "triton_python_b"), 15: (11, "prted"), 16: (15, "tritonserver"), 20: (1, "tritonserver")}
    assert sorted(rank_roots_under(table, 11)) == [12, 13, 16]
    assert rank_roots_under(table, 999) == []


def test_gpu_memory_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = [types.SimpleNamespace(used=5 * 2**30), types.SimpleNamespace(used=2**30)]
    nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2,
                                 nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetMemoryInfo=memory.__getitem__)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert GpuMeter().used() == {0: 5 * 2**30, 1: 2**30}


def test_gpu_memory_without_the_drivers_reservation_where_nvml_has_version_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """An H200 with nothing on it: version 1 says 615 MiB used (the driver's reservation), nvidia-smi and
    version 2 say 0 (seen on a lent H200, driver 580.159.04, nvidia-ml-py 13.615.71)."""
    def info(handle: int, version: object = None) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=0 if version == "v2" else 615 * MiB)

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=info, nvmlMemory_v2="v2"))
    assert GpuMeter().used() == {0: 0}


def test_no_gpu_figures_without_nvml_or_its_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert GpuMeter().used() == {}

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert GpuMeter().used() == {}


def test_the_leader_reads_a_workers_figures_over_http(rank: tuple[subprocess.Popen[str], int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    proc, size = rank
    memory = types.SimpleNamespace(used=7 * 2**30)
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: memory))
    agent = WorkerAgent()
    agent.ranks = {proc.pid: None}  # type: ignore[dict-item]  # what observe() found: only its keys are read
    agent.ranks_gauge.set(1)
    published = agent.load.publish([proc.pid])
    server = HealthServer(free_port(), agent.registry, agent.live, agent.ready, host="127.0.0.1").start()
    try:
        figures = fetch_pod_figures("127.0.0.1", server.port)
        assert figures == PodFigures(published.rank_bytes, 1, {0: 7 * 2**30}) and figures.rank_bytes[5] >= size
        code, body = http_get(server.port, "/readyz")
        assert code == 200 and body.startswith("waiting; read rank 5 ") and body.endswith(" MiB\n")
    finally:
        server.stop()
    assert fetch_pod_figures("127.0.0.1", server.port, timeout_s=0.5) is None  # gone: no figures, no error


def test_figures_parse_from_metrics_text() -> None:
    text = ('# TYPE launcher_worker_rank_bytes_read gauge\nlauncher_worker_rank_bytes_read{rank="2"} 1.5e+09\n'
            'launcher_worker_rank_bytes_read{rank="3"} 12.0\nlauncher_worker_ranks 2.0\n'
            'launcher_worker_gpu_memory_used_bytes{gpu="1"} 4096.0\nlauncher_worker_daemons 1.0\n')
    assert parse_pod_figures(text) == PodFigures({2: 1_500_000_000, 3: 12}, 2, {1: 4096})
    assert parse_pod_figures("") == PodFigures({}, 0, {})


def test_monotonic_even_when_a_child_goes(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    weights.write_bytes(b"x" * MiB)
    script = (f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', "
              f"\"open({str(weights)!r}, 'rb').read()\"])\nprint('done', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PMIX_RANK": "0"})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        time.sleep(0.1)
        assert RankMeter().sample([proc.pid])[0] >= MiB  # the reaped child's reads moved to its parent
    finally:
        proc.kill()
        proc.wait()
