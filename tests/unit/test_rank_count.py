"""Counting a launch's local ranks among real processes: a rank's own fork (Triton forks before it
execs each python backend stub, the child keeping the rank's name for that moment) is no rank."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from launcher.supervisor import count_ranks

# Name this process "tritonserver" (PR_SET_NAME, as its comm), say how many forks to make, make them
# (they keep the name, as a fork does), then wait.
RANK = """
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"tritonserver", 0, 0, 0)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        break
os.write(1, b"ready\\n")  # one write each: the forks share the pipe
time.sleep(60)
"""


def ranks_forking(forks: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", RANK, str(forks)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(forks + 1):
        assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_ranks_fork_is_not_counted_as_another_rank() -> None:
    ranks = [ranks_forking(0), ranks_forking(2)]
    try:
        family = [psutil.Process(r.pid) for r in ranks]
        family += [child for rank in family for child in rank.children()]
        assert sorted(p.name() for p in family) == ["tritonserver"] * 4  # what a count by name saw
        assert count_ranks(family) == 2
    finally:
        for proc in ranks:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait()


def test_a_zombie_rank_is_not_counted() -> None:
    rank = ranks_forking(0)
    rank.kill()
    deadline = time.monotonic() + 5
    while psutil.Process(rank.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert count_ranks([psutil.Process(rank.pid)]) == 0
    finally:
        rank.wait()
