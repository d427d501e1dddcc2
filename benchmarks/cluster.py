"""Kubernetes discovery and group-supervision figures on the real test control plane (as root).

    CLUSTER_NODES=8 python -m benchmarks.cluster [--rounds 5] [--sizes 2 4 8] [--agent kubessh|pod-rsh]
        [--round-trips 30]

Per group size, each round: an LWS whose workers wait for a node label; `launcher leader` runs as the
leader pod's process (its token, the chart's Role); the label is set on every other node, the workers
turn Running, and we time
- last worker pod Running (seen by a watch in this process) -> "mpirun started" (the launcher's JSON log,
  same clock), and side by side
- the same moment -> a 2-second poll loop (list every 2 s, the thing to beat) seeing every pod Running.
Then, for groups of 2 once rank 0 serves: worker pod deleted -> leader process exit (target <= 3 s).
Sizes above the node count are skipped (one pod per node). Last, `kubessh <pod> true` from the leader
pod into the worker, timed end to end (process start included) --round-trips times (target median
<= 0.3 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from cluster.controlplane import SYSTEM_PATH, Cluster
from tests.cluster.lws import NAME, apply_lws, grant_launcher_role, group_key, lws, pods_of, running_group, wait_for
from tests.integration.launch import private_repo, wait_ready

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
POD_RSH = REPO / "tests" / "agents" / "pod-rsh"
LABEL = "launcher-bench"

# pod-rsh finds a pod's sandbox through $PODNET_DIR/<pod>.pid; which node (sandbox) a pod landed on is
# known once the fixture wrote the pod's name into that node's /etc/hosts, before kwok reports Running.
BENCH_RSH = """#!/bin/sh
while read -r hosts pid; do
    pod=$(tail -n 1 "$hosts" | awk '{print $NF}')
    [ -n "$pod" ] && echo "$pid" > "$PODNET_DIR/$pod.pid.$$" && mv "$PODNET_DIR/$pod.pid.$$" "$PODNET_DIR/$pod.pid"
done < "$PODNET_DIR/nodes.tsv"
exec %s "$@"
"""


def pod_rsh_by_node(cluster: Cluster, podnet: Path) -> Path:
    podnet.mkdir(exist_ok=True)
    (podnet / "nodes.tsv").write_text("".join(f"{n.sandbox.hosts} {n.sandbox.pid}\n" for n in cluster.nodes))
    agent = podnet / "bench-rsh"
    agent.write_text(BENCH_RSH % POD_RSH)
    agent.chmod(0o755)
    return agent


def all_running(pods: list[Any], size: int) -> bool:
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return len(live) == size and all(p.status.phase == "Running" and p.status.pod_ip for p in live)


class RunningClock:
    """Wall time at which the group was last seen becoming fully Running: by a watch, and by a 2 s poll."""

    def __init__(self, api: Any, ns: str, name: str, size: int) -> None:
        self.api, self.ns, self.name, self.size = api, ns, name, size
        self.watched: float | None = None
        self.polled: float | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    def _watch(self) -> None:
        core, pods = client.CoreV1Api(self.api), {}
        for event in watch.Watch().stream(core.list_namespaced_pod, self.ns, label_selector=f"{NAME}={self.name}",
                                          timeout_seconds=300):
            pod = event["object"]
            pods[pod.metadata.name] = pod
            if event["type"] == "DELETED":
                pods.pop(pod.metadata.name)
            if self.watched is None and all_running(list(pods.values()), self.size):
                self.watched = time.time()
            if self._stop.is_set():
                return

    def _poll(self) -> None:
        self._stop.wait(random.uniform(0.0, 2.0))  # a poller's phase is arbitrary against the pods
        while not self._stop.is_set() and self.polled is None:
            if all_running(pods_of(self.api, self.ns, self.name), self.size):
                self.polled = time.time()
                return
            self._stop.wait(2.0)

    def close(self) -> None:
        self._stop.set()


def logged_time(log: Path, text: str) -> float | None:
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if text in entry.get("message", ""):
                return datetime.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
    return None


def wait_until(what: str, check: Any, now: Any, timeout: float) -> Any:
    """``wait_for`` polled every 20 ms, so that waiting adds little to a round."""
    return wait_for(what, check, now, timeout, interval_s=0.02)


def one_round(cluster: Cluster, size: int, agent: str, tmp: Path, serve_and_delete: bool) -> dict[str, float]:
    ns = cluster.create_namespace("bench")
    grant_launcher_role(cluster.api, ns)
    apply_lws(cluster.api, ns, lws("b", size, worker={"nodeSelector": {LABEL: "yes"}}, leader={}))
    leader = wait_until("the leader pod", lambda: next(
        (p for p in pods_of(cluster.api, ns, "b") if p.status.phase == "Running" and p.metadata.labels
         and group_key(p)), None), lambda: pods_of(cluster.api, ns, "b"), 60)
    podnet = tmp / "podnet"
    rsh = pod_rsh_by_node(cluster, podnet)
    repo = private_repo(tmp) if not (tmp / "model_repository").exists() else tmp / "model_repository"
    log = tmp / f"leader-{size}-{time.monotonic_ns()}.log"
    argv = [str(VENV_BIN / "launcher"), "leader", f"--tp={size}", "--gpus-per-pod=1", f"--model-repo={repo}",
            "--model=toy_tp", "--log-format=json", "--stop-grace-period=1", "--discovery-timeout=120",
            f"--rsh-agent={rsh if agent == 'pod-rsh' else 'kubessh'}"]
    core = client.CoreV1Api(cluster.api)
    others = [n.name for n in cluster.nodes if n.name != leader.spec.node_name][: size - 1]
    figures: dict[str, float] = {}
    with log.open("w") as out:
        proc = cluster.popen_in_pod(ns, leader.metadata.name, argv, env={"PODNET_DIR": str(podnet)},
                                    stdout=out, stderr=subprocess.STDOUT, text=True, cwd="/")
    try:
        # Only once the launcher has listed the group (its first progress line) is it watching: a fixed
        # sleep under load let the pods turn Running before it looked, timing its start-up instead.
        wait_until("the launcher watching its group", lambda: logged_time(log, "pods running (worker"),
                   lambda: log.read_text()[-2000:], 60)
        clock = RunningClock(cluster.api, ns, "b", size)
        for node in others:
            core.patch_node(node, {"metadata": {"labels": {LABEL: "yes"}}})
        started = wait_until("mpirun started", lambda: logged_time(log, "mpirun started"),
                             lambda: log.read_text()[-2000:], 60)
        wait_until("the 2 s poll", lambda: clock.polled, lambda: clock.polled, 10)
        clock.close()
        assert clock.watched is not None and clock.polled is not None
        figures["watch_s"] = started - clock.watched
        discovered = logged_time(log, f"discovery: {size}/{size} pods running:")
        figures["discovered_s"] = (discovered or started) - clock.watched
        figures["poll_s"] = clock.polled - clock.watched
        if serve_and_delete:
            wait_ready(8000, proc, timeout_s=120, host=leader.status.pod_ip)
            worker = next(p.metadata.name for p in pods_of(cluster.api, ns, "b")
                          if p.metadata.name != leader.metadata.name)
            begun = time.monotonic()
            core.delete_namespaced_pod(worker, ns)
            code = proc.wait(timeout=30)
            figures["delete_exit_s"] = time.monotonic() - begun
            figures["delete_exit_code"] = code
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        for node in others:
            core.patch_node(node, {"metadata": {"labels": {LABEL: None}}})
        cluster.delete_namespace(ns, timeout=60)
    return figures


ROUND_TRIPS = """
import subprocess, sys, time
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    subprocess.run(["kubessh", sys.argv[1], "true"], check=True, stdin=subprocess.DEVNULL)
    print(f"{time.perf_counter() - t0:.4f}")
"""


def kubessh_round_trips(cluster: Cluster, count: int) -> list[float]:
    """``kubessh <worker> true`` run ``count`` times as the leader pod's process, each timed whole."""
    ns = cluster.create_namespace("bench")
    try:
        grant_launcher_role(cluster.api, ns)
        apply_lws(cluster.api, ns, lws("rt", 2))
        leader, worker = wait_until("the group", lambda: running_group(cluster.api, ns, "rt", 2),
                                    lambda: pods_of(cluster.api, ns, "rt"), 60)
        proc = cluster.popen_in_pod(ns, leader.metadata.name, [sys.executable, "-c", ROUND_TRIPS,
                                                               worker.metadata.name, str(count)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"kubessh round trips failed: {err}")
        return [float(t) for t in out.split()]
    finally:
        cluster.delete_namespace(ns, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--agent", choices=["pod-rsh", "kubessh"], default="kubessh")
    parser.add_argument("--round-trips", type=int, default=30, help="kubessh <pod> true, timed (0: skip)")
    args = parser.parse_args()
    nodes = int(os.environ.get("CLUSTER_NODES", "4"))
    sizes = [s for s in args.sizes if s <= nodes]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmpdir:
        tmp = Path(tmpdir)
        cluster = Cluster(tmp / "cluster", nodes_count=nodes, path=f"{VENV_BIN}:{SYSTEM_PATH}")
        (tmp / "cluster").mkdir()
        cluster.start()
        try:
            print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                  f"nproc={os.cpu_count()}, nodes={nodes}, agent={args.agent}, rounds={args.rounds}")
            print("size  last pod Running -> discovered (watch) | -> mpirun started (+ agent probes) "
                  "| -> 2 s poll sees it   [median, all]")
            deletes: list[float] = []
            for size in sizes:
                rows = [one_round(cluster, size, args.agent, tmp, serve_and_delete=(size == 2))
                        for _ in range(args.rounds)]
                w = [r["watch_s"] for r in rows]
                d = [r["discovered_s"] for r in rows]
                p = [r["poll_s"] for r in rows]
                deletes += [r["delete_exit_s"] for r in rows if "delete_exit_s" in r]
                codes = {int(r["delete_exit_code"]) for r in rows if "delete_exit_code" in r}
                print(f"{size:>4}  {statistics.median(d):6.3f}s {[round(x, 3) for x in d]}"
                      f" | {statistics.median(w):6.3f}s {[round(x, 3) for x in w]}"
                      f" | {statistics.median(p):6.3f}s {[round(x, 3) for x in p]}"
                      + (f"   exit codes {sorted(codes)}" if codes else ""))
            if deletes:
                print(f"worker pod deleted -> leader exit (size 2): median {statistics.median(deletes):.3f}s "
                      f"{[round(x, 3) for x in deletes]} (target <= 3 s)")
            if args.round_trips:
                trips = kubessh_round_trips(cluster, args.round_trips)
                print(f"kubessh <pod> true: median {statistics.median(trips):.3f}s, min {min(trips):.3f}s, "
                      f"max {max(trips):.3f}s over {len(trips)} (target median <= 0.3 s)")
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
