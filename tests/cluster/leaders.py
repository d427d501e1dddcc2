"""Leaders at scale on the test control plane (tests/cluster/test_scale.py and benchmarks/scale.py):
one LeaderWorkerSet of many groups whose workers stay Pending, each group's `launcher leader` watching
it from its leader pod, and the API server's own figures of what they ask of it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cluster.controlplane import Cluster
from tests.cluster.lws import WORKER_INDEX, apply_lws, grant_launcher_role, lws, pods_of, wait_for
from tests.conftest import VENV_BIN
from tests.integration.launch import private_repo

NAME = "s"

Leader = tuple[subprocess.Popen[str], Path]


def apiserver_metrics(api: Any) -> str:
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    return str(response.data.decode())


def pod_requests(text: str, metric: str, verb: str) -> float:
    """The sum of ``metric`` over its namespaced pods series for ``verb`` (the leaders' own calls: every
    controller lists and watches pods cluster-wide)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") and 'resource="pods"' in line and 'scope="namespace"' in line \
                and f'verb="{verb}"' in line and 'subresource=""' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_watching_leaders(cluster: Cluster, ns: str, groups: int, size: int, tmp: Path) -> list[Leader]:
    """``groups`` groups of ``size`` pods whose workers never schedule (a node label no node has), and
    each group's leader process, once every one of them has listed its group (its first progress line)."""
    grant_launcher_role(cluster.api, ns)
    manifest = lws(NAME, size, worker={"nodeSelector": {"scale-test": "never"}}, leader={})
    manifest["spec"]["replicas"] = groups
    apply_lws(cluster.api, ns, manifest)
    wait_for(f"{groups} leader pods Running", lambda: sum(
        1 for p in pods_of(cluster.api, ns, NAME)
        if p.metadata.labels.get(WORKER_INDEX) == "0" and p.status.phase == "Running") == groups or None,
        lambda: [(p.metadata.name, p.status.phase) for p in pods_of(cluster.api, ns, NAME)], timeout=300)
    repo = private_repo(tmp)
    leaders = sorted((p for p in pods_of(cluster.api, ns, NAME) if p.metadata.labels.get(WORKER_INDEX) == "0"),
                     key=lambda p: p.metadata.name)
    started = []
    for i, pod in enumerate(leaders):
        base = 20000 + 10 * i
        argv = [str(VENV_BIN / "launcher"), "leader", f"--tp={size}", "--gpus-per-pod=1", f"--model-repo={repo}",
                "--model=toy_tp", "--log-format=json", "--discovery-timeout=600", f"--http-port={base}",
                f"--grpc-port={base + 1}", f"--metrics-port={base + 2}", f"--health-port={base + 3}"]
        log = tmp / f"{pod.metadata.name}.log"
        with log.open("w") as out:
            proc = cluster.popen_in_pod(ns, pod.metadata.name, argv, stdout=out, stderr=subprocess.STDOUT,
                                        text=True, cwd="/")
        started.append((proc, log))
    wait_for("every leader watching its group", lambda: all(
        "pods running (" in log.read_text(errors="replace") for _, log in started) or None,
        lambda: [log.read_text(errors="replace")[-300:] for _, log in started[:3]], timeout=300)
    return started


def stop_leaders(leaders: list[Leader]) -> None:
    for proc, _ in leaders:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in leaders:
        proc.wait(timeout=60)


def log_records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
