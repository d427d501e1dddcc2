"""Startup progress: what its sampling costs, and what it adds to a launch.

    .venv/bin/python -m benchmarks.progress [--seconds 60] [--ranks 8] [--rounds 5] [--launch-ranks 2 4]
                                            [--baseline REV]

1. Sampling at 1 s with ``--ranks`` rank processes, each with a child that keeps reading its weights
   (as Triton's python backend stub does), under a stand-in ``mpirun``:
   - the leader's ``StartupMonitor`` alone in this process (a progress line every second, logged to
     /dev/null): CPU seconds of this process (getrusage) over the wall time (goal <= 0.5 %);
   - a worker's ``WorkerExport.publish`` alone in this process, each call scanning /proc itself
     (the agent hands it the table of its own scan instead, so this is an upper bound);
   - ``launcher worker`` watching those ranks, this tree against ``--baseline`` (no progress).
2. Launch time, start -> rank 0 ready, alternating in one run: bare ``mpirun`` of the same ranks,
   ``launcher local`` (progress on), and ``launcher local`` of ``--baseline`` (default: the commit before
   launcher/startup.py was added, extracted with ``git archive`` and run through PYTHONPATH).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry

from benchmarks.launch import bare_round, fmt, launcher_stop, wait_ready
from launcher.loadmeter import WorkerExport, process_table
from launcher.plan import LaunchPlan, MpiFlavor, Rank
from launcher.startup import MonitorOptions, StartupMonitor
from tests.conftest import REPO, VENV_BIN, free_port
from tests.integration.launch import kill_leftovers, launch_env, start_local

MiB = 2**20
READER = """
import sys, time
path, rate = sys.argv[1], float(sys.argv[2])
with open(path, "rb", buffering=0) as f:
    while f.read(int(rate) // 10):
        time.sleep(0.1)
"""
RANK = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]])"


@contextmanager
def reading_ranks(ranks: int, tmp: Path) -> Iterator[int]:
    """A process named mpirun whose ``ranks`` children (with MPI's rank variable) each have a child reading
    a 4 GiB sparse file at 4 MiB/s; yields mpirun's pid."""
    lines = ["#!/bin/sh"]
    for rank in range(ranks):
        with open(tmp / f"w{rank}", "wb") as f:
            f.truncate(4 << 30)
        lines.append(f"OMPI_COMM_WORLD_RANK={rank} {sys.executable} -c \"{RANK}\" '{READER}' {tmp / f'w{rank}'} "
                     f"{4 * MiB} &")
    script = tmp / "mpirun"
    script.write_text("\n".join([*lines, "wait", ""]))
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)], start_new_session=True)
    try:
        time.sleep(2)
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_percent(run: Callable[[], None], seconds: float) -> float:
    """This process's CPU over ``seconds`` of wall time while ``run`` (started here, stopped by the caller)
    works in its own thread."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    run()
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return 100 * used / (time.monotonic() - started)


def leader_sampling(mpirun: int, ranks: int, seconds: float) -> float:
    plan = LaunchPlan(MpiFlavor(5, 0), (), tuple(Rank(r, "here", "127.0.0.1", r, ()) for r in range(ranks)),
                      (), {}, (), "")
    options = MonitorOptions(interval_s=1.0, stall_s=120.0, health_port=free_port(), http_port=free_port())
    monitor = StartupMonitor(plan, {r: 4 << 30 for r in range(ranks)}, options)
    try:
        return cpu_percent(lambda: monitor.start(mpirun, CollectorRegistry()), seconds)
    finally:
        monitor.close()


def worker_publish(mpirun: int, seconds: float) -> float:
    export = WorkerExport(CollectorRegistry())
    roots = [p.pid for p in psutil.Process(mpirun).children()]
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        export.publish(roots)
        time.sleep(1.0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return 100 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / seconds


def worker_agent_cpu(pythonpath: str | None, seconds: float) -> float:
    """CPU % of a `launcher worker` process (1 s looks) over ``seconds``, after 5 s of settling."""
    env = launch_env(**({"PYTHONPATH": pythonpath} if pythonpath else {}))
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "worker", f"--health-port={free_port()}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = psutil.Process(proc.pid)
        time.sleep(5)
        before = sum(worker.cpu_times()[:2])
        time.sleep(seconds)
        return 100 * (sum(worker.cpu_times()[:2]) - before) / seconds
    finally:
        proc.terminate()
        proc.wait()


def baseline_tree(rev: str | None, into: Path) -> tuple[str, Path]:
    """The launcher package of ``rev`` (default: before launcher/startup.py existed), extracted under ``into``."""
    if rev is None:
        added = git("log", "--diff-filter=A", "--format=%H", "--", "launcher/startup.py").split()[-1]
        rev = git("rev-parse", f"{added}^").strip()
    archive = into / "baseline.tar"
    archive.write_bytes(subprocess.run(["git", "-C", str(REPO), "archive", rev, "launcher"], check=True,
                                       capture_output=True).stdout)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return rev, into / "tree"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def local_ready(ranks: int, tmp: Path, pythonpath: str | None, mpirun: str) -> float:
    env = launch_env(**({"PYTHONPATH": pythonpath} if pythonpath else {}))
    spawned = time.monotonic()
    launch = start_local(tmp, ranks, f"--mpirun={mpirun}", env=env)
    try:
        ready = wait_ready(launch.ports.http, launch.proc) - spawned
        launcher_stop(launch)
        return ready
    finally:
        kill_leftovers(launch)


def launch_times(ranks: int, rounds: int, baseline: Path, mpirun: str) -> dict[str, list[float]]:
    """Start -> ready of each kind, in a rotating order per round."""
    kinds: dict[str, Callable[[Path], float]] = {
        "bare mpirun": lambda tmp: bare_round(ranks, tmp, mpirun),
        "launcher (progress)": lambda tmp: local_ready(ranks, tmp, None, mpirun),
        "launcher (baseline)": lambda tmp: local_ready(ranks, tmp, str(baseline), mpirun),
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    names = list(kinds)
    for i in range(rounds):
        for kind in names[i % 3:] + names[:i % 3]:
            with tempfile.TemporaryDirectory() as tmp:
                times[kind].append(kinds[kind](Path(tmp)))
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--launch-ranks", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--baseline", default=None, help="git revision without progress")
    parser.add_argument("--mpirun", default=str(VENV_BIN / "mpirun"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # the lines cost what they cost
    print(f"# {platform.node()} {os.cpu_count()} cpus, {len(process_table())} processes, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory() as tmp:
        rev, baseline = baseline_tree(args.baseline, Path(tmp))
        with reading_ranks(args.ranks, Path(tmp)) as mpirun:
            sampling(mpirun, args.ranks, args.seconds, baseline)
        for ranks in args.launch_ranks:
            times = launch_times(ranks, args.rounds, baseline, args.mpirun)
            print(f"ranks={ranks}, start -> rank 0 ready (baseline {rev[:12]}):")
            for kind, values in times.items():
                print(f"  {kind:20} {fmt(values)}")
            bare = statistics.median(times["bare mpirun"])
            for kind in ("launcher (progress)", "launcher (baseline)"):
                print(f"  {kind} / bare mpirun (medians) {statistics.median(times[kind]) / bare:.3f}")
    return 0


def sampling(mpirun: int, ranks: int, seconds: float, baseline: Path) -> None:
    leader = leader_sampling(mpirun, ranks, seconds)
    print(f"leader StartupMonitor, {ranks} ranks, 1 s sampling and lines, {seconds:.0f}s: CPU {leader:.3f} % "
          f"(goal <= 0.5: {'OK' if leader <= 0.5 else 'MISSED'})")
    publish = worker_publish(mpirun, seconds)
    print(f"worker WorkerExport.publish, {ranks} ranks, 1 s, own /proc scan, {seconds:.0f}s: CPU {publish:.3f} %")
    agent, old = worker_agent_cpu(None, seconds), worker_agent_cpu(str(baseline), seconds)
    print(f"launcher worker watching {ranks} ranks, {seconds:.0f}s: CPU {agent:.3f} % with progress, "
          f"{old:.3f} % baseline")


if __name__ == "__main__":
    sys.exit(main())
