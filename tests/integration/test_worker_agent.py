"""The worker agent watching real ranks start and die on this machine."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import VENV_BIN, free_port
from tests.conftest import http_get as get
from tests.integration.launch import LocalLaunch, kill_leftovers, launch_env, start_local, wait_ready

pytestmark = pytest.mark.integration


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.1)
    return time.monotonic() - start


def metric(port: int, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", get(port, "/metrics")[1], re.M)
    return float(match.group(1)) if match else None


@pytest.fixture
def pod() -> Iterator[list[str]]:
    """A UTS namespace standing in for the worker's pod: the agent counts only its processes."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to give the test its own pod namespace")
    holder = subprocess.Popen(["unshare", "--uts", "--fork", "sleep", "infinity"])
    eventually(lambda: any(c.name() == "sleep" for c in psutil.Process(holder.pid).children()))
    sleeper = psutil.Process(holder.pid).children()[0].pid
    yield ["nsenter", "-t", str(sleeper), "-u"]
    psutil.Process(sleeper).kill()
    holder.wait()


@pytest.fixture
def worker_port(tmp_path: Path, pod: list[str]) -> Iterator[int]:
    port = free_port()
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([*pod, str(VENV_BIN / "launcher"), "worker", f"--health-port={port}", "--interval=0.2"],
                            stdout=log, stderr=subprocess.STDOUT, env=launch_env())
    eventually(lambda: get(port, "/healthz")[0] == 200)
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    log.close()


@pytest.fixture
def launches() -> Iterator[list[LocalLaunch]]:
    started: list[LocalLaunch] = []
    yield started
    for launch in started:
        kill_leftovers(launch)


def test_worker_sees_ranks_arrive_and_leave(worker_port: int, pod: list[str], tmp_path: Path,
                                            launches: list[LocalLaunch]) -> None:
    assert get(worker_port, "/healthz") == (200, "waiting\n")
    assert metric(worker_port, 'launcher_worker_state{worker_state="waiting"}') == 1.0
    launch = start_local(tmp_path, 2, prefix=pod)
    launches.append(launch)
    wait_ready(launch.ports.http, launch.proc)
    eventually(lambda: metric(worker_port, "launcher_worker_ranks") == 2.0)
    assert get(worker_port, "/healthz") == (200, "ranked\n")
    assert launch.stop() == 0
    eventually(lambda: get(worker_port, "/healthz")[0] == 503)
    assert re.match(r"lost: \d+ ranks and \d+ MPI daemons ended", get(worker_port, "/healthz")[1])
    assert metric(worker_port, "launcher_worker_rank_losses_total") == 1.0


def test_worker_ends_ranks_orphaned_by_a_dead_mpirun(worker_port: int, pod: list[str], tmp_path: Path,
                                                     launches: list[LocalLaunch]) -> None:
    launch = start_local(tmp_path, 2, prefix=pod)
    launches.append(launch)
    wait_ready(launch.ports.http, launch.proc)
    eventually(lambda: metric(worker_port, "launcher_worker_ranks") == 2.0)
    mpirun = [p for p in psutil.Process(launch.proc.pid).children(recursive=True) if p.name() in ("prterun", "mpirun")]
    assert mpirun
    launch.proc.kill()  # the leader dies without cleaning up ...
    for proc in mpirun:
        proc.kill()  # ... and so does mpirun: its ranks are orphans now
    launch.proc.wait()
    assert launch.rank_processes(), "expected orphaned ranks"
    seconds = eventually(lambda: not launch.rank_processes(), timeout_s=15)
    assert get(worker_port, "/healthz")[0] == 503
    assert seconds < 10


def test_a_daemon_ended_but_not_yet_reaped_counts_as_ended(worker_port: int, pod: list[str]) -> None:
    """Its parent (this test) does not reap the daemon, as a busy or careless PID 1 may not: a zombie
    is no daemon, and the rank it leaves behind is ended."""
    daemon = subprocess.Popen([*pod, "sh", "-c", "OMPI_COMM_WORLD_RANK=0 sleep 300 & wait"])
    try:
        eventually(lambda: metric(worker_port, "launcher_worker_ranks") == 1.0)
        rank = next(p for p in psutil.Process(daemon.pid).children() if p.name() == "sleep")
        os.kill(daemon.pid, signal.SIGKILL)  # not waited for: a zombie until the end of the test
        eventually(lambda: psutil.Process(daemon.pid).status() == psutil.STATUS_ZOMBIE)
        eventually(lambda: get(worker_port, "/healthz")[0] == 503, timeout_s=10)
        eventually(lambda: not psutil.pid_exists(rank.pid) or rank.status() == psutil.STATUS_ZOMBIE, timeout_s=10)
    finally:
        daemon.kill()
        daemon.wait()
