"""Launch benchmarks on this machine (CPU tritonserver, Open MPI 5 from PyPI).

    .venv/bin/python benchmarks/launch.py [--rounds 5] [--ranks 2 4]

Prints, per rank count, alternating in one run:
- start -> rank 0 ready: `launcher local` versus bare `mpirun` of the very
  same tritonserver ranks (argv from the launcher's own plan builder);
  target ratio <= 1.10;
- SIGTERM to the launcher -> every rank process gone (target <= 5 s);
- a rank SIGKILLed -> launcher exit (target median <= 2 s).
Both sides are timed the same way: from process spawn to the first ready
answer, polled every 20 ms.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import tritonclient.http as httpclient  # noqa: E402  (imported before any timing starts)

from launcher.config import LaunchConfig  # noqa: E402
from launcher.leader import detect_mpi  # noqa: E402
from launcher.plan import Member, build_plan  # noqa: E402
from launcher.tritonbin import find_tritonserver  # noqa: E402
from tests.integration.launch import (  # noqa: E402
    Ports,
    kill_leftovers,
    launch_env,
    private_repo,
    processes_using,
    start_local,
)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> float:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=1, network_timeout=1)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before ready")
        try:
            if client.is_server_ready():
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


def launcher_round(ranks: int, tmp: Path) -> tuple[float, float]:
    """(start -> ready, SIGTERM -> all ranks gone) for `launcher local`."""
    spawned = time.monotonic()
    launch = start_local(tmp, ranks)
    try:
        ready = wait_ready(launch.ports.http, launch.proc) - spawned
        stopping = time.monotonic()
        launch.proc.send_signal(signal.SIGTERM)
        gone = wait_gone(str(launch.repo)) - stopping
        launch.proc.wait(30)
        return ready, gone
    finally:
        kill_leftovers(launch)


def bare_round(ranks: int, tmp: Path) -> float:
    """start -> ready for mpirun started by hand with the same ranks."""
    env = launch_env()
    repo = private_repo(tmp)
    ports = Ports.free()
    config = LaunchConfig(tp=ranks, gpus_per_pod=ranks, model_repo=repo, model="toy_tp", http_port=ports.http,
                          grpc_port=ports.grpc, metrics_port=ports.metrics, health_port=ports.health)
    mpirun, flavor = detect_mpi("mpirun", env)
    plan = build_plan(LaunchConfig(**{**config.__dict__, "mpirun": mpirun}), [Member("localhost", "127.0.0.1", 0)],
                      flavor, triton=find_tritonserver(), environ=env, launch_id="bare", is_root=os.geteuid() == 0,
                      agent=None)
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


def rank_kill_round(ranks: int, tmp: Path) -> float:
    launch = start_local(tmp, ranks)
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


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}s  min {min(values):.3f}s  max {max(values):.3f}s  (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for ranks in args.ranks:
        launcher_ready, bare_ready, stop, kill = [], [], [], []
        for i in range(args.rounds):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                if i % 2 == 0:
                    ready, gone = launcher_round(ranks, Path(a))
                    bare = bare_round(ranks, Path(b))
                else:
                    bare = bare_round(ranks, Path(b))
                    ready, gone = launcher_round(ranks, Path(a))
            launcher_ready.append(ready)
            bare_ready.append(bare)
            stop.append(gone)
            with tempfile.TemporaryDirectory() as c:
                kill.append(rank_kill_round(ranks, Path(c)))
        ratio = statistics.median(launcher_ready) / statistics.median(bare_ready)
        print(f"ranks={ranks}")
        print(f"  launcher local start->ready  {fmt(launcher_ready)}")
        print(f"  bare mpirun    start->ready  {fmt(bare_ready)}")
        print(f"  ratio launcher/bare (medians) {ratio:.3f}   target <= 1.10  {'OK' if ratio <= 1.10 else 'MISSED'}")
        print(f"  SIGTERM -> all ranks gone    {fmt(stop)}   target <= 5 s  "
              f"{'OK' if max(stop) <= 5 else 'MISSED'}")
        print(f"  rank killed -> leader exit   {fmt(kill)}   target median <= 2 s  "
              f"{'OK' if statistics.median(kill) <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
