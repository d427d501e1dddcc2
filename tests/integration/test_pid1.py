"""The launcher as PID 1 of its own PID namespace, as in a container: orphans re-parented to it are
reaped, SIGTERM reaches the launcher, and its exit status is the container's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port, http_get

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

ORPHANS = "(sleep 0.2 &); (sleep 0.2 &); (sleep 0.2 &)"  # three processes whose parent exits at once


def in_pid_namespace(argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` as PID 1 of a new PID namespace (with its own /proc)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a PID namespace)")
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def pid1_of(unshare: subprocess.Popen[bytes]) -> int:
    """Host PID of the namespace's PID 1 (unshare's only child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = psutil.Process(unshare.pid).children()
        if children:
            return children[0].pid
        time.sleep(0.05)
    raise AssertionError("no PID 1 in the namespace")


def make_orphans(pid1: int) -> None:
    """Processes that end while re-parented to the namespace's PID 1 (as MPI daemons started by exec)."""
    subprocess.run(["nsenter", "-t", str(pid1), "-p", "-m", "sh", "-c", ORPHANS], check=True)
    time.sleep(1.0)


def namespace_zombies(pid1: int) -> list[str]:
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/pid") == ns and proc.info["status"] == psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {proc.info['name']}")
        except OSError:
            continue
    return found


@pytest.fixture
def worker_as_pid1() -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port = free_port()
    proc = in_pid_namespace([sys.executable, "-m", "launcher", "worker", f"--health-port={port}"])
    try:
        pid1 = pid1_of(proc)
        deadline = time.monotonic() + 20
        while http_get(port, "/healthz")[0] != 200:
            assert time.monotonic() < deadline and proc.poll() is None, "the worker did not come up"
            time.sleep(0.1)
        yield proc, pid1, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_a_process_that_is_pid1_and_never_waits_leaves_zombies() -> None:
    """The check below can fail: a PID 1 that does not reap keeps the orphans as zombies."""
    proc = in_pid_namespace([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid1 = pid1_of(proc)
        make_orphans(pid1)
        assert len(namespace_zombies(pid1)) == 3
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_launcher_as_pid1_reaps_orphans(worker_as_pid1: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, pid1, port = worker_as_pid1
    assert Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")[2] == b"launcher"
    make_orphans(pid1)
    assert namespace_zombies(pid1) == []
    assert http_get(port, "/healthz") == (200, "waiting\n")  # and the worker itself carries on


def test_sigterm_to_pid1_stops_the_launcher_with_its_status(
        worker_as_pid1: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, pid1, _ = worker_as_pid1
    os.kill(pid1, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert proc.stdout is not None
    assert b"received SIGTERM" in proc.stdout.read()


def test_the_launcher_killed_under_pid1_ends_the_namespace_with_128_plus_the_signal(
        worker_as_pid1: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, pid1, _ = worker_as_pid1
    launcher = psutil.Process(pid1).children()[0]
    launcher.kill()
    assert proc.wait(timeout=20) == 128 + signal.SIGKILL
