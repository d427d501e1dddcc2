"""Autoscaling figures (as root): the chart under KEDA on the real nodes, scaled out by load and back.

    .venv/bin/python -m benchmarks.autoscale [--rounds 2]

Each round (tests/cluster/realnode/autoscale.py): helm install with autoscaling.provider=keda, four
clients on group 0's rank 0; seconds from the load's start until the HPA asks for 2 groups and until
the second group's leader answers, and from the load's end until the HPA asks for 1 and the second
group's pods are gone. Printed with the scrape interval and the windows used.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from cluster.controlplane import Cluster
from cluster.realnode import RealNodes
from tests.chart.chart_helpers import find_tool
from tests.cluster.realnode.autoscale import Figures, scale_out_and_in


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    helm = find_tool("helm", "HELM")
    if os.geteuid() != 0 or helm is None:
        sys.exit("needs root, helm (scripts/install-test-tools.sh), cluster/build.sh and cluster/image.sh")
    started = datetime.datetime.now(datetime.timezone.utc)
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="autoscale-bench-") as tmp, \
            Cluster(Path(tmp) / "cluster", nodes_count=0) as cluster:
        cluster.start_keda()
        nodes = RealNodes(cluster, 2).start()
        try:
            for i in range(args.rounds):
                (Path(tmp) / f"round-{i}").mkdir()
                results.append(scale_out_and_in(cluster, nodes, helm, Path(tmp) / f"round-{i}"))
                print(f"round {i + 1}: {results[-1].line()}", flush=True)
        finally:
            nodes.stop()
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| | median | min | max | rounds |\n|---|---|---|---|---|")
    for name, values in (("load -> HPA asks for 2 groups", [r.decided_s for r in results]),
                         ("load -> second group's leader answering", [r.serving_s for r in results]),
                         ("load stopped -> HPA asks for 1 group", [r.scaled_in_s for r in results]),
                         ("load stopped -> second group's pods gone", [r.gone_s for r in results])):
        print(f"| {name} | {statistics.median(values):.1f} s | {min(values):.1f} s | {max(values):.1f} s "
              f"| {len(values)} |")


if __name__ == "__main__":
    main()
