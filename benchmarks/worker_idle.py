"""Idle cost of the worker agent: RSS and CPU while no rank runs.

    .venv/bin/python -m benchmarks.worker_idle [--seconds 60]

Starts `launcher worker` (default 1 s interval), lets it settle, then samples
its CPU time and RSS over the window. Targets: <= 40 MiB RSS, <= 0.5 % CPU.
The agent looks at every process it can see, so the host's process count is
printed too (a pod has far fewer than a development machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import psutil

from tests.conftest import VENV_BIN, free_port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "launcher"), "worker", f"--health-port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = psutil.Process(proc.pid)
        time.sleep(5)
        cpu_before = sum(worker.cpu_times()[:2])
        started = time.monotonic()
        peak_rss = 0
        while time.monotonic() - started < args.seconds:
            peak_rss = max(peak_rss, worker.memory_info().rss)
            time.sleep(1)
        elapsed = time.monotonic() - started
        cpu = (sum(worker.cpu_times()[:2]) - cpu_before) / elapsed * 100
        rss_mib = peak_rss / 2**20
        print(f"# {platform.node()} {os.cpu_count()} cpus, {len(psutil.pids())} processes visible, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"worker idle over {elapsed:.0f}s: peak RSS {rss_mib:.1f} MiB (target <= 40: "
              f"{'OK' if rss_mib <= 40 else 'MISSED'}), CPU {cpu:.2f} % (target <= 0.5: "
              f"{'OK' if cpu <= 0.5 else 'MISSED'})")
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
