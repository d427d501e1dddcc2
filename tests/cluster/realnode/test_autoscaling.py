"""Autoscaling end to end on the real nodes (tests/cluster/realnode/autoscale.py): the chart with
autoscaling.provider=keda goes from 1 to 2 groups under load, the second group's leader answers,
and back to 1 after the load stops; real Prometheus, KEDA and kube-controller-manager throughout."""
from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.utils import parse_quantity

from cluster.controlplane import BIN, Cluster
from cluster.realnode import RealNodes
from tests.chart.chart_helpers import INSTALL_HINT, find_tool
from tests.cluster.realnode.autoscale import scale_out_and_in
from tests.monitoring.prom import PROMETHEUS, binary_or_skip

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]


@pytest.fixture(scope="module")
def keda(cluster: Cluster) -> None:
    for binary in (BIN / "keda-operator", BIN / "keda-adapter", PROMETHEUS):
        binary_or_skip(binary)
    cluster.start_keda()


def test_load_adds_a_serving_group_and_its_end_removes_it(cluster: Cluster, real_nodes: RealNodes, keda: None,
                                                         tmp_path: Path) -> None:
    helm = find_tool("helm", "HELM")
    if helm is None:
        pytest.skip(f"helm not found: {INSTALL_HINT}")
    figures = scale_out_and_in(cluster, real_nodes, helm, tmp_path)
    print(f"\nautoscaling: {figures.line()}")
    assert parse_quantity(figures.metric) > 1  # what made the HPA ask: the sum over the target, above 1 per group
