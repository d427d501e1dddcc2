"""Launch benchmarks: `launcher local` against bare mpirun of the same ranks.

    python -m benchmarks.launch [--rounds 5] [--ranks 2 4] [--mpirun PATH] [-- extra launcher flags]

Prints, per rank count, alternating in one run:
- start -> rank 0 ready: `launcher local` versus bare `mpirun` of the very
  same tritonserver ranks (argv from the launcher's own plan builder);
  target ratio <= 1.10;
- SIGTERM to the launcher -> every rank process gone (target <= 5 s);
- a rank SIGKILLed -> launcher exit (target median <= 2 s).
Both sides are timed the same way: from process spawn to the first ready
answer, polled every 20 ms. benchmarks/gpu/ reuses these functions.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import tritonclient.http as httpclient  # imported before any timing starts

from launcher.config import LaunchConfig, parse_env_assignments
from launcher.mpi import detect_mpi
from launcher.plan import Member, build_plan
from launcher.supervisor import hostfile_written
from launcher.tritonbin import find_tritonserver
from tests.integration.launch import (
    LocalLaunch,
    Ports,
    kill_leftovers,
    launch_env,
    private_repo,
    processes_using,
    start_local,
)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> float:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=1, network_timeout=1)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before ready")
        try:
            if client.is_server_ready():
                client.close()
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.02)
    raise RuntimeError("not ready in time")


def wait_gone(marker: str, timeout_s: float = 60) -> float:
    while processes_using(marker):
        time.sleep(0.02)
        timeout_s -= 0.02
        if timeout_s < 0:
            raise RuntimeError("processes left behind")
    return time.monotonic()


def env_flags(extra: Sequence[str]) -> dict[str, str]:
    return parse_env_assignments([a.split("=", 1)[1] for a in extra if a.startswith("--env=")])[0]


def launcher_start(ranks: int, tmp: Path, extra: Sequence[str]) -> tuple[LocalLaunch, float]:
    """A running `launcher local` and its start -> ready seconds."""
    spawned = time.monotonic()
    launch = start_local(tmp, ranks, *extra)
    try:
        return launch, wait_ready(launch.ports.http, launch.proc) - spawned
    except BaseException:
        kill_leftovers(launch)
        raise


def launcher_stop(launch: LocalLaunch) -> float:
    """SIGTERM -> every rank process gone, in seconds."""
    stopping = time.monotonic()
    launch.proc.send_signal(signal.SIGTERM)
    gone = wait_gone(str(launch.repo)) - stopping
    launch.proc.wait(30)
    return gone


def launcher_round(ranks: int, tmp: Path, extra: Sequence[str] = ()) -> tuple[float, float]:
    launch, ready = launcher_start(ranks, tmp, extra)
    try:
        return ready, launcher_stop(launch)
    finally:
        kill_leftovers(launch)


def bare_round(ranks: int, tmp: Path, mpirun: str = "mpirun", extra: Sequence[str] = ()) -> float:
    """start -> ready for mpirun started by hand with the same ranks."""
    env = launch_env()
    repo = private_repo(tmp)
    ports = Ports.free()
    mpirun_path, flavor = detect_mpi(mpirun, env)
    config = LaunchConfig(tp=ranks, gpus_per_pod=ranks, model_repo=repo, model="toy_tp", http_port=ports.http,
                          grpc_port=ports.grpc, metrics_port=ports.metrics, health_port=ports.health,
                          mpirun=mpirun_path, extra_env=env_flags(extra))
    plan = build_plan(config, [Member("localhost", "127.0.0.1", 0)], flavor, triton=find_tritonserver(),
                      environ=env, launch_id="bare", is_root=os.geteuid() == 0, agent=None)
    with hostfile_written(plan):
        spawned = time.monotonic()
        proc = subprocess.Popen(plan.argv, env={**env, **plan.env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return wait_ready(ports.http, proc) - spawned
        finally:
            for p in processes_using(str(repo)):
                p.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_gone(str(repo))


def rank_kill_round(ranks: int, tmp: Path, extra: Sequence[str] = ()) -> float:
    launch = start_local(tmp, ranks, *extra)
    try:
        wait_ready(launch.ports.http, launch.proc)
        victim = next(p for p in launch.rank_processes() if f"--id=rank{ranks - 1}" in p.cmdline())
        killed = time.monotonic()
        victim.kill()
        code = launch.proc.wait(60)
        assert code != 0, "the launcher must fail when a rank dies"
        return time.monotonic() - killed
    finally:
        kill_leftovers(launch)


def alternate(ranks: int, rounds: int, mpirun: str,
              extra: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
    """(launcher start->ready, bare start->ready, SIGTERM->gone), launcher first on even rounds."""
    launcher_ready, bare_ready, stop = [], [], []
    for i in range(rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            if i % 2:
                bare_ready.append(bare_round(ranks, Path(b), mpirun, extra))
            ready, gone = launcher_round(ranks, Path(a), extra)
            if not i % 2:
                bare_ready.append(bare_round(ranks, Path(b), mpirun, extra))
        launcher_ready.append(ready)
        stop.append(gone)
    return launcher_ready, bare_ready, stop


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}s  min {min(values):.3f}s  max {max(values):.3f}s  (n={len(values)})"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--mpirun", default="mpirun")
    parser.add_argument("extra", nargs="*", help="extra `launcher local` flags, after --")
    args = parser.parse_args()
    extra = [f"--mpirun={args.mpirun}", *args.extra]
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for ranks in args.ranks:
        launcher_ready, bare_ready, stop = alternate(ranks, args.rounds, args.mpirun, extra)
        kill = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as c:
                kill.append(rank_kill_round(ranks, Path(c), extra))
        ratio = statistics.median(launcher_ready) / statistics.median(bare_ready)
        print(f"ranks={ranks}")
        print(f"  launcher local start->ready  {fmt(launcher_ready)}")
        print(f"  bare mpirun    start->ready  {fmt(bare_ready)}")
        print(f"  ratio launcher/bare (medians) {ratio:.3f}   target <= 1.10  {verdict(ratio <= 1.10)}")
        print(f"  SIGTERM -> all ranks gone    {fmt(stop)}   target <= 5 s  {verdict(max(stop) <= 5)}")
        print(f"  rank killed -> leader exit   {fmt(kill)}   target median <= 2 s  "
              f"{verdict(statistics.median(kill) <= 2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
