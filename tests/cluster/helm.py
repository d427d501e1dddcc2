"""The chart on the test control plane: helm against its apiserver, the release's pods, a claim."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.chart.chart_helpers import CHART, TOOLS
from tests.chart.chart_helpers import LWS_WORKER_INDEX as WORKER_INDEX
from tests.cluster.lws import wait_for

INSTANCE = "app.kubernetes.io/instance"
CLAIM = "models"
MODEL_REPO = "/var/run/models/toy/triton_model_repo"
# Values that fit the test cluster (4 nodes of 8 "GPUs", one pod per node): a group of 2 pods.
VALUES = {
    "image.repository": "example.invalid/lws-triton", "image.tag": "test",
    "tensorrtLLM.parallelism.tensor": "2", "tensorrtLLM.parallelism.pipeline": "1", "gpuPerNode": "1",
    "resources.efa": "0", "resources.cpu": "1", "resources.memory": "1Gi", "resources.ephemeralStorage": "",
    "shmSize": "64Mi",
    "startup.timeoutSeconds": "120", "startup.discoveryTimeoutSeconds": "60",
    "modelRepository.persistentVolumeClaim": CLAIM, "modelRepository.path": MODEL_REPO,
    "service.type": "ClusterIP", "autoscaling.enabled": "false", "lws.replicas": "1",
}


class Release:
    """helm against the test cluster's apiserver, in one namespace."""

    def __init__(self, binary: Path, kubeconfig: Path, namespace: str) -> None:
        self.binary, self.kubeconfig, self.namespace = binary, kubeconfig, namespace

    def helm(self, *args: str) -> str:
        home = TOOLS / "helm-home"
        env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        result = subprocess.run([str(self.binary), *args, "--kubeconfig", str(self.kubeconfig),
                                 "--namespace", self.namespace], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def install(self, name: str, values: dict[str, str]) -> None:
        self.helm("install", name, str(CHART), *set_flags(values))

    def upgrade(self, name: str, values: dict[str, str]) -> None:
        self.helm("upgrade", name, str(CHART), *set_flags(values))

    def uninstall(self, name: str) -> None:
        self.helm("uninstall", name)

    def releases(self) -> list[str]:
        return [r["name"] for r in json.loads(self.helm("list", "--output", "json"))]


STRING_VALUES = {"image.tag", "resources.ephemeralStorage"}


def set_flags(values: dict[str, str]) -> list[str]:
    return [flag for key, value in values.items()
            for flag in ("--set-string" if key in STRING_VALUES else "--set", f"{key}={value}")]


def group_pods_selector(release: str) -> str:
    """The label selector of the release's group pods (leaders and workers, not its helm test pod)."""
    return f"{INSTANCE}={release},app.kubernetes.io/component!=test"


def release_pods(core: client.CoreV1Api, ns: str, release: str) -> list[client.V1Pod]:
    """The release's group pods (not its helm test pod), in group and worker order."""
    pods = core.list_namespaced_pod(ns, label_selector=group_pods_selector(release)).items
    return sorted((p for p in pods if p.metadata.deletion_timestamp is None),
                  key=lambda p: (p.metadata.labels.get("leaderworkerset.sigs.k8s.io/group-index", ""),
                                 int(p.metadata.labels.get(WORKER_INDEX, "-1"))))


def running(core: client.CoreV1Api, ns: str, release: str, count: int) -> list[client.V1Pod] | None:
    pods = release_pods(core, ns, release)
    ok = len(pods) == count and all(p.status.phase == "Running" and p.status.pod_ip for p in pods)
    return pods if ok else None


def describe(core: client.CoreV1Api, ns: str) -> list[dict[str, Any]]:
    """Each pod of ``ns`` as a failing test should show it: phase, release, conditions, why each
    container waits or ended, and the pod's Warning events (the kubelet's: image, probes, mounts)."""
    warnings: dict[str, list[str]] = {}
    for event in core.list_namespaced_event(ns).items:
        if event.involved_object.kind == "Pod" and event.type == "Warning":
            warnings.setdefault(event.involved_object.name, []).append(f"{event.reason}: {event.message}")
    described = []
    for p in core.list_namespaced_pod(ns).items:
        containers = []
        for c in p.status.container_statuses or []:
            state = c.state.waiting or c.state.terminated
            containers.append(f"{c.name} ready={c.ready} restarts={c.restart_count}"
                              + (f" {state.reason}: {state.message or ''}" if state else ""))
        described.append({
            "pod": p.metadata.name, "phase": p.status.phase, "release": (p.metadata.labels or {}).get(INSTANCE),
            "node": p.spec.node_name, "conditions": [f"{c.type}={c.status} {c.message or ''}".strip()
                                                     for c in p.status.conditions or []],
            "containers": containers, "warnings": warnings.get(p.metadata.name, [])})
    return described


def provide_claim(core: client.CoreV1Api, ns: str, path: Path | None = None) -> str:
    """The model-repository claim the chart mounts, bound to a hostPath PV of this test (no provisioner
    here) at ``path`` (default /tmp/<pv>); returns the PV's name."""
    pv = f"models-{ns}"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path or f"/tmp/{pv}")}}})
    core.create_namespaced_persistent_volume_claim(ns, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for("the model claim to bind", lambda: core.read_namespaced_persistent_volume_claim(CLAIM, ns).status.phase
         == "Bound", lambda: core.read_namespaced_persistent_volume_claim(CLAIM, ns).status)
    return pv
