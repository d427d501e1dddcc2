"""What many watching leaders ask of the API server, against the tutorial's polling (as root).

    python -m benchmarks.scale [--groups 10 25 50] [--window 65] [--size 4]

On a control plane of its own (two kwok nodes holding every leader pod), per group count N: one
LeaderWorkerSet of N groups whose workers stay Pending, each group's `launcher leader` watching its
group from its leader pod; over --window seconds the API server's own counters give the requests
per second on namespaced pods (list, watch, get: the leaders' calls; every controller's are
cluster-wide) and the open pod watches, and psutil the leaders' memory. Then the same N groups
under the original tutorial's loop instead: `kubectl get pods` for the group every 2 s, one loop
per group, measured the same way in the same run. Last, with the largest N watching, the API
server is killed and started again: time until every leader watches again, and the pod requests
it had answered by then (its counters start at zero with it; sampled every
0.2 s from the moment it is ready).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from cluster.controlplane import SYSTEM_PATH, Cluster
from tests.chart.chart_helpers import find_tool
from tests.cluster.leaders import NAME, apiserver_metrics, pod_requests, start_watching_leaders, stop_leaders
from tests.cluster.lws import GROUP_KEY, pods_of

VENV_BIN = Path(sys.executable).parent
VERBS = ("LIST", "WATCH", "GET")
POLL = 'while :; do "$0" --kubeconfig "$1" -n "$2" get pods -l "$3" -o wide >/dev/null 2>&1; sleep 2; done'


def pod_calls(api: Any) -> tuple[float, float]:
    """(namespaced pod requests so far, open namespaced pod watches)."""
    text = apiserver_metrics(api)
    return (sum(pod_requests(text, "apiserver_request_total", verb) for verb in VERBS),
            pod_requests(text, "apiserver_longrunning_requests", "WATCH"))


def window(api: Any, seconds: float) -> tuple[float, float]:
    """(requests per second, open watches at the end) over ``seconds``."""
    before, _ = pod_calls(api)
    time.sleep(seconds)
    after, watches = pod_calls(api)
    return (after - before) / seconds, watches


def polling_loops(cluster: Cluster, ns: str) -> list[subprocess.Popen[bytes]]:
    """One `kubectl get pods` loop every 2 s per group, as the tutorial's launcher waited for its pods."""
    kubectl = find_tool("kubectl", "KUBECTL")
    if kubectl is None:
        raise SystemExit("kubectl not found: run scripts/install-test-tools.sh")
    keys = sorted({p.metadata.labels[GROUP_KEY] for p in pods_of(cluster.api, ns, NAME)})
    return [subprocess.Popen(["sh", "-c", POLL, str(kubectl), str(cluster.kubeconfig), ns, f"{GROUP_KEY}={key}"],
                             start_new_session=True) for key in keys]


def restart_recovery(cluster: Cluster, watchers: int) -> dict[str, float]:
    killed = time.monotonic()
    cluster.restart("kube-apiserver", down_s=3)
    back = time.monotonic()
    samples: list[tuple[float, float, float]] = []
    while time.monotonic() - back < 120:
        calls, watches = pod_calls(cluster.api)
        samples.append((time.monotonic(), calls, watches))
        if watches >= watchers:
            break
        time.sleep(0.2)
    return {"back_s": back - killed, "watching_s": samples[-1][0] - back, "watches": samples[-1][2],
            "requests": samples[-1][1]}


def one_count(cluster: Cluster, groups: int, size: int, seconds: float, tmp: Path,
              restart: bool) -> dict[str, Any]:
    ns = cluster.create_namespace(f"scale{groups}")
    row: dict[str, Any] = {"groups": groups}
    logs = tmp / f"leaders-{groups}"
    logs.mkdir()
    leaders = start_watching_leaders(cluster, ns, groups, size, logs)
    try:
        time.sleep(2.0)  # past the leaders' own start-up calls
        row["leader_rps"], row["leader_watches"] = window(cluster.api, seconds)
        rss = sorted(psutil.Process(proc.pid).memory_info().rss / 2**20 for proc, _ in leaders)
        row["rss_median_mib"], row["rss_max_mib"] = statistics.median(rss), rss[-1]
        if restart:
            row["restart"] = restart_recovery(cluster, groups)
            row["alive_after_restart"] = sum(1 for proc, _ in leaders if proc.poll() is None)
    finally:
        stop_leaders(leaders)
    loops = polling_loops(cluster, ns)
    try:
        time.sleep(4.0)  # every loop past its first round
        row["poll_rps"], _ = window(cluster.api, seconds)
    finally:
        for loop in loops:
            os.killpg(loop.pid, 15)
            loop.wait()
    cluster.delete_namespace(ns, timeout=120)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--size", type=int, default=4, help="pods per group (only the leader ever runs)")
    parser.add_argument("--window", type=float, default=65.0,
                        help="seconds each rate is measured over (past the leaders' 60 s watch requests)")
    args = parser.parse_args()
    most = max(args.groups)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "cluster").mkdir()
        cluster = Cluster(tmp / "cluster", nodes_count=2, pods_per_node=math.ceil(most / 2),
                          path=f"{VENV_BIN}:{SYSTEM_PATH}")
        cluster.start()
        try:
            print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                  f"nproc={os.cpu_count()}, groups of {args.size} pods, {args.window:g} s windows")
            print("groups | leaders: pod requests/s, open watches | 2 s kubectl polling: requests/s | ratio "
                  "| leader RSS median / max")
            rows = []
            for groups in sorted(args.groups):
                row = one_count(cluster, groups, args.size, args.window, tmp, restart=groups == most)
                rows.append(row)
                ratio = f"{row['poll_rps'] / row['leader_rps']:.0f}x" if row["leader_rps"] else "no leader request"
                print(f"{groups:>6} | {row['leader_rps']:8.3f} {row['leader_watches']:5.0f} | "
                      f"{row['poll_rps']:8.2f} | {ratio} | {row['rss_median_mib']:.0f} / "
                      f"{row['rss_max_mib']:.0f} MiB")
            last = rows[-1]["restart"]
            print(f"API server restart under {most} watching leaders: back (ready) {last['back_s']:.1f}s after "
                  f"the kill; every leader watching again {last['watching_s']:.2f}s later ({last['watches']:.0f} "
                  f"watches), {last['requests']:.0f} pod requests since its start; "
                  f"{rows[-1]['alive_after_restart']}/{most} leaders alive")
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
