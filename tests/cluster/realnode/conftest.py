"""Session fixture: real nodes (containerd, runc, CNI, kubelet; kube-proxy) on the cluster fixture's
control plane, with the project's image (cluster/image.sh) imported. Needs root, cluster/build.sh and
cluster/image.sh; skipped without them, except under CI, where a missing piece fails."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from cluster.controlplane import Cluster
from cluster.realnode import RealNodes

REAL_NODES = 2


@pytest.fixture(scope="session")
def real_nodes(cluster: Cluster) -> Iterator[RealNodes]:
    nodes = RealNodes(cluster, REAL_NODES)
    t0 = time.monotonic()
    try:
        nodes.start()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    print(f"\n{REAL_NODES} real nodes Ready in {time.monotonic() - t0:.1f}s (image {nodes.image})")
    try:
        yield nodes
    finally:
        nodes.stop()
