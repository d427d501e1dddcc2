"""Session fixture: a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, LWS controller with its webhooks, one kwok per node sandbox).

Binaries come from ``cluster/build.sh`` (cached under .cache/cluster). Needs root
(network namespaces). CLUSTER_NODES sets the node count (one pod per node).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from cluster.controlplane import BIN, SYSTEM_PATH, Cluster  # the repo root is on pythonpath (pyproject)
from tests.chart.chart_helpers import INSTALL_HINT, find_tool
from tests.cluster.helm import Release, provide_claim


@contextmanager
def running_cluster(workdir: Path, nodes: int, pods_per_node: int = 1) -> Iterator[Cluster]:
    """A started control plane whose exec'd commands find this virtualenv's tools first ("the image":
    mpirun, tritonserver, launcher, kubessh); skipped without root or the binaries (failed in CI)."""
    if os.geteuid() != 0:
        pytest.skip("the cluster fixture needs root (network namespaces)")
    if not (BIN / "kube-apiserver").exists():
        msg = f"no control-plane binaries in {BIN}: run cluster/build.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    c = Cluster(workdir, nodes_count=nodes, pods_per_node=pods_per_node,
                path=f"{Path(sys.executable).parent}:{SYSTEM_PATH}")
    t0 = time.monotonic()
    c.start()
    print(f"\ncluster up in {time.monotonic() - t0:.1f}s {c.timings} kubeconfig={c.kubeconfig}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), int(os.environ.get("CLUSTER_NODES", "4"))) as c:
        yield c


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards with its pods."""
    name = cluster.create_namespace()
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def helm_in(cluster: Cluster, namespace: str) -> Iterator[Release]:
    """helm against the cluster in ``namespace``, with the model claim the chart mounts."""
    binary = find_tool("helm", "HELM")
    if binary is None:
        pytest.skip(f"helm not found: {INSTALL_HINT}")
    core = client.CoreV1Api(cluster.api)
    pv = provide_claim(core, namespace)
    yield Release(binary, cluster.kubeconfig, namespace)
    core.delete_persistent_volume(pv)
