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

from .plan import LAUNCH_ID_ENV, MPI_LAUNCHERS


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


def rank_roots(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes MPI started (ranks, or their nsys wrapper), not their children.

    Only these get the polite SIGTERM: a rank shuts its own helpers down (Triton
    waits for its python backend stubs), and a stub signalled directly dies
    under Triton, which then waits for it until its exit timeout.
    """
    roots = []
    for proc in procs:
        try:
            if psutil.Process(proc.ppid()).name() in MPI_LAUNCHERS and proc.name() not in MPI_LAUNCHERS:
                roots.append(proc)
        except psutil.Error:
            continue
    return roots


def terminate(procs: Iterable[psutil.Process], grace_s: float,
              polite: Iterable[psutil.Process] | None = None) -> list[psutil.Process]:
    """SIGTERM ``polite`` (default: all; none for an immediate kill), wait up to
    ``grace_s`` for all, then SIGKILL; return what survived even that."""
    procs = list(procs)
    for proc in procs if polite is None else polite:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    alive = wait_gone(procs, grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return wait_gone(alive, 2.0)


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (one that has ended, not yet reaped)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` runs; return those still running at the deadline.

    A zombie counts as gone: orphans are reaped by PID 1, which in a container
    may take its time, and a zombie holds no GPU, port or memory."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if running(p)]
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
