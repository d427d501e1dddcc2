"""The chart installed on the real nodes with the project's image: one release, its pods, its Service.
Shared by tests/cluster/realnode and benchmarks.realnode."""
from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from cluster.controlplane import Cluster
from cluster.realnode import NODE_LABEL, TAINT, RealNodes
from launcher.cli.local import EXAMPLE_CANARY
from tests.chart.chart_helpers import merge_into
from tests.cluster.helm import Release, describe, provide_claim, release_pods
from tests.cluster.lws import wait_for
from tests.cluster.realnode.pods import ExitRecorder
from tests.integration.launch import TOY_REPO, expected_output, infer

RELEASE = "srv"
MOUNT = "/var/run/models"
LWS = f"{RELEASE}-lws-triton"
GRACE_S = 20
DRAIN_DELAY_S = 2
BACKOFF = {"onPermanentError": "park", "windowSeconds": 600, "backoffSeconds": 4, "backoffMaxSeconds": 8}
RECOVERY_S = 240  # a fault -> the recreated group answering again
CHART = Path(__file__).resolve().parents[3] / "chart"


@dataclass
class Served:
    cluster: Cluster
    nodes: RealNodes
    helm: Release
    ns: str
    exits: ExitRecorder
    values_file: Path

    def upgrade(self, *sets: str) -> None:
        """helm upgrade with the release's values and ``--set`` overrides (none: back to the values)."""
        self.helm.helm("upgrade", RELEASE, str(CHART), "-f", str(self.values_file),
                       *(word for s in sets for word in ("--set", s)))

    def failure_events(self) -> list[str]:
        """Messages of the LaunchFailed Events on the release's LeaderWorkerSet, oldest first."""
        selector = f"involvedObject.kind=LeaderWorkerSet,involvedObject.name={LWS},reason=LaunchFailed"
        events = self.core.list_namespaced_event(self.ns, field_selector=selector)
        return [e.message for e in sorted(events.items, key=lambda e: e.last_timestamp)]

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.cluster.api)

    def pods(self) -> list[client.V1Pod]:
        return release_pods(self.core, self.ns, RELEASE)

    def describe(self) -> Any:
        """The pods now, and every container exit seen so far with its message (pods LWS deleted too)."""
        return {"pods": describe(self.core, self.ns), "exits": sorted(self.exits.ended, key=lambda e: e.finished)}

    def service_ip(self) -> str:
        return str(self.core.read_namespaced_service(f"{RELEASE}-lws-triton-api", self.ns).spec.cluster_ip)

    def pid1(self, pod: client.V1Pod) -> int:
        return self.nodes.container_pid(self.ns, pod.metadata.name, pod.spec.containers[0].name)


def values(image: str, repo: str) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "tensorrtLLM": {"parallelism": {"tensor": 2, "pipeline": 1}}, "gpuPerNode": 1,
        "resources": {"cpu": 1, "memory": "2Gi", "ephemeralStorage": "", "efa": 0}, "shmSize": "256Mi",
        "startup": {"timeoutSeconds": 180, "discoveryTimeoutSeconds": 120},
        "modelRepository": {"persistentVolumeClaim": "models", "mountPath": MOUNT, "path": repo, "model": "toy_tp"},
        "service": {"type": "ClusterIP"},
        "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
        "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}],
        "terminationGracePeriodSeconds": GRACE_S,
        # short backoffs: every fault of these tests is a failure of the group within one window
        "restarts": BACKOFF,
        "drain": {"delaySeconds": DRAIN_DELAY_S, "timeoutSeconds": 5},
        "canary": {"model": "toy_tp", "inputs": EXAMPLE_CANARY, "intervalSeconds": 10, "deadlineSeconds": 5,
                   "misses": 3},
    }


def ready_group(s: Served, not_uids: set[str] = frozenset()) -> list[client.V1Pod] | None:  # type: ignore[assignment]
    """Leader and worker Running and Ready (the kubelet's own probes), none of ``not_uids``."""
    pods = [p for p in s.pods() if p.metadata.deletion_timestamp is None]
    ok = len(pods) == 2 and all(
        p.status.phase == "Running" and p.metadata.uid not in not_uids
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) for p in pods)
    return pods if ok else None


def answers(s: Served) -> tuple[list[float], int] | None:
    try:
        return infer(8000, [1.0, 2.0, 3.0], host=s.service_ip())
    except Exception:  # noqa: BLE001 - not yet routed or not yet serving
        return None


def serving_again(s: Served, old: list[client.V1Pod], timeout: float = RECOVERY_S) -> list[client.V1Pod]:
    """A group of new pods, Ready, answering through the Service with both ranks."""
    t0 = time.monotonic()
    old_uids = {p.metadata.uid for p in old}
    pods = wait_for("a new group Ready", lambda: ready_group(s, old_uids), s.describe, timeout)
    wait_for("an answer through the Service", lambda: answers(s), s.describe, timeout - (time.monotonic() - t0))
    assert answers(s) == (expected_output([1.0, 2.0, 3.0], 2), 2)
    print(f"serving again after {time.monotonic() - t0:.1f}s")
    return pods


@contextlib.contextmanager
def installed(cluster: Cluster, nodes: RealNodes, helm_binary: Path, workdir: Path,
              changes: dict[str, Any] | None = None) -> Iterator[Served]:
    """A namespace with the toy model on a hostPath claim and the chart installed in it with these
    tests' values and ``changes`` to them (not waited for); uninstalled and deleted afterwards."""
    ns = cluster.create_namespace("real")
    models = workdir / f"models-{ns}"
    shutil.copytree(TOY_REPO, models / "toy", ignore=shutil.ignore_patterns("__pycache__"))
    models.chmod(0o755)
    core = client.CoreV1Api(cluster.api)
    pv = provide_claim(core, ns, models)
    values_file = workdir / f"{ns}-values.yaml"
    chosen = values(nodes.image, f"{MOUNT}/toy")
    merge_into(chosen, changes or {})
    values_file.write_text(yaml.safe_dump(chosen))
    helm = Release(helm_binary, cluster.kubeconfig, ns)
    served = Served(cluster, nodes, helm, ns, ExitRecorder(cluster.api, ns), values_file)
    helm.helm("install", RELEASE, str(CHART), "-f", str(values_file))
    try:
        yield served
    finally:
        served.exits.close()
        helm.helm("uninstall", RELEASE, "--wait", "--timeout", "60s")
        cluster.delete_namespace(ns, timeout=120)
        core.delete_persistent_volume(pv)
