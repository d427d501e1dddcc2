"""Gang admission through the real Kueue controller (`kueue.queueName`): with quota for one group, a
second release's group waits with every pod gated (none scheduled, none holding a GPU) and is
admitted once the first release is uninstalled; the wait from the uninstall to its pods Running is
printed.

A control plane of its own: Kueue's pod webhook would otherwise see every pod of the shared one.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cluster.controlplane import BIN, Cluster
from tests.chart.chart_helpers import INSTALL_HINT, find_tool
from tests.cluster.conftest import running_cluster
from tests.cluster.helm import VALUES, Release, describe, provide_claim, release_pods, running
from tests.cluster.lws import wait_for

pytestmark = pytest.mark.cluster

KUEUE = "kueue.x-k8s.io"
GATE = "kueue.x-k8s.io/admission"
QUEUED = {**VALUES, "kueue.queueName": "team"}


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not (BIN / "kueue").exists():
        msg = f"no kueue in {BIN}: run cluster/build.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with running_cluster(tmp_path_factory.mktemp("kueue"), nodes=4) as c:
        c.start_kueue()
        yield c


def quota_for_one_group(api: Any, ns: str) -> None:
    """A ClusterQueue of 2 GPUs (one group of two one-GPU pods) and the namespace's LocalQueue "team"."""
    custom = client.CustomObjectsApi(api)
    custom.create_cluster_custom_object(KUEUE, "v1beta2", "resourceflavors", {
        "apiVersion": f"{KUEUE}/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "gpu-nodes"}})
    custom.create_cluster_custom_object(KUEUE, "v1beta2", "clusterqueues", {
        "apiVersion": f"{KUEUE}/v1beta2", "kind": "ClusterQueue", "metadata": {"name": "gpus"},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
            "flavors": [{"name": "gpu-nodes", "resources": [
                {"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": "256Gi"},
                {"name": "nvidia.com/gpu", "nominalQuota": "2"}]}]}]}})
    custom.create_namespaced_custom_object(KUEUE, "v1beta2", ns, "localqueues", {
        "apiVersion": f"{KUEUE}/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team"},
        "spec": {"clusterQueue": "gpus"}})


def gated(core: client.CoreV1Api, ns: str, release: str) -> list[client.V1Pod] | None:
    """The release's pods while every one waits behind Kueue's gate, unscheduled."""
    pods = release_pods(core, ns, release)
    return pods if pods and all(
        GATE in [g.name for g in p.spec.scheduling_gates or []] and not p.spec.node_name for p in pods) else None


def test_a_group_waits_for_quota_and_is_admitted_when_it_frees(kueue_cluster: Cluster, tmp_path: Path) -> None:
    binary = find_tool("helm", "HELM")
    if binary is None:
        pytest.skip(f"helm not found: {INSTALL_HINT}")
    cluster = kueue_cluster
    ns, core = cluster.create_namespace("kueue"), client.CoreV1Api(cluster.api)
    pv = provide_claim(core, ns)
    helm = Release(binary, cluster.kubeconfig, ns)
    quota_for_one_group(cluster.api, ns)
    helm.install("first", QUEUED)
    wait_for("first's group admitted and Running", lambda: running(core, ns, "first", 2), lambda: describe(core, ns))
    helm.install("second", QUEUED)
    wait_for("second's pods gated by Kueue", lambda: gated(core, ns, "second"), lambda: describe(core, ns))
    held_until = time.monotonic() + 5
    while time.monotonic() < held_until:  # quota for one group: the second stays gated
        assert gated(core, ns, "second"), describe(core, ns)
        time.sleep(0.2)
    helm.uninstall("first")
    uninstalled = time.monotonic()
    wait_for("first's pods gone", lambda: not core.list_namespaced_pod(
        ns, label_selector="app.kubernetes.io/instance=first").items, lambda: describe(core, ns), timeout=120)
    gone = time.monotonic()
    wait_for("second's gates removed", lambda: not gated(core, ns, "second"), lambda: describe(core, ns), timeout=120)
    admitted = time.monotonic()
    wait_for("second's group Running", lambda: running(core, ns, "second", 2), lambda: describe(core, ns), timeout=120)
    print(f"\nKueue, after `helm uninstall first`: its pods gone {gone - uninstalled:.2f}s, second's pods "
          f"admitted (gates removed) {admitted - gone:.2f}s later, Running {time.monotonic() - admitted:.2f}s after "
          f"that")
    helm.uninstall("second")
    core.delete_persistent_volume(pv)
