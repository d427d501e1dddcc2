"""Finding and ending the processes of one launch.

Every process of a launch carries ``LAUNCHER_LAUNCH_ID`` in its environment
(mpirun's own, inherited by local daemons and forwarded with -x to ranks), so
the leader can find them even after they left mpirun's process group: Open
MPI gives each rank its own process group, and daemons started through the
agent outlive mpirun when it is killed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable

import psutil

from .plan import LAUNCH_ID_ENV


def processes_with_env(name: str, value: str) -> list[psutil.Process]:
    """Processes (not this one) whose environment has ``name=value``."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def launch_processes(launch_id: str) -> list[psutil.Process]:
    return processes_with_env(LAUNCH_ID_ENV, launch_id)


def terminate(procs: Iterable[psutil.Process], grace_s: float) -> list[psutil.Process]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; return what survived even that."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=2.0)
    return alive


def sweep(find: Callable[[], list[psutil.Process]], grace_s: float, rounds: int = 3) -> list[psutil.Process]:
    """End everything ``find`` returns, again while new ones appear (daemons fork late)."""
    survivors: list[psutil.Process] = []
    for _ in range(rounds):
        procs = find()
        if not procs:
            return []
        survivors = terminate(procs, grace_s)
        time.sleep(0.05)
    return survivors


def kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
