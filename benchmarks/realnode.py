"""Real-node figures (as root): the chart on real kubelets running the project's image.

    .venv/bin/python -m benchmarks.realnode [--rounds 3] [--no-image-build]

Printed side by side in one run:
- the image build (cluster/image.sh on a copy of this repository's files, in an empty cache):
  cold (debootstrap and every layer), fresh (nothing changed: nothing is rebuilt) and warm (one
  launcher file changed: only the layers from the wheel on), and the image's size;
- two real nodes (kubelet + containerd) Ready with both images imported, on a running control plane;
- per round: `helm install` -> the first answer through the Service's ClusterIP (both ranks), then
  the leader pod deleted -> the recreated group answering again, then `helm uninstall`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.controlplane import Cluster
from cluster.realnode import RealNodes
from tests.chart.chart_helpers import find_tool
from tests.cluster.lws import wait_for
from tests.cluster.realnode.release import answers, installed, ready_group, serving_again

REPO = Path(__file__).resolve().parent.parent


def image_builds(work: Path) -> dict[str, float]:
    """Seconds for cold, fresh and warm builds of a copy of the tree, and the image in MiB."""
    tree = work / "tree"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    env = {**os.environ, "CLUSTER_CACHE": str(work / "cache")}

    def build() -> float:
        t0 = time.monotonic()
        subprocess.run(["bash", str(tree / "cluster" / "image.sh")], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.monotonic() - t0

    figures = {"cold": build(), "fresh": build()}
    with open(tree / "launcher" / "__init__.py", "a") as f:
        f.write("# a change\n")
    figures["warm"] = build()
    figures["size_mib"] = (work / "cache" / "images" / "lws-triton.tar").stat().st_size / 2**20
    return figures


def rounds(cluster: Cluster, nodes: RealNodes, helm: Path, work: Path, count: int) -> list[tuple[float, float]]:
    results = []
    for i in range(count):
        with installed(cluster, nodes, helm, work) as s:
            t0 = time.monotonic()
            wait_for("the group Ready", lambda: ready_group(s), s.describe, 240)
            wait_for("an answer through the Service", lambda: answers(s), s.describe, 120)
            install_s = time.monotonic() - t0
            pods = ready_group(s) or []
            t1 = time.monotonic()
            s.core.delete_namespaced_pod(pods[0].metadata.name, s.ns)
            serving_again(s, pods)
            recover_s = time.monotonic() - t1
        print(f"round {i + 1}: install -> answer {install_s:.1f} s, leader deleted -> serving {recover_s:.1f} s",
              flush=True)
        results.append((install_s, recover_s))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-image-build", action="store_true", help="skip the cold/fresh/warm image builds")
    args = ap.parse_args()
    helm = find_tool("helm", "HELM")
    if os.geteuid() != 0 or helm is None:
        sys.exit("needs root, helm (scripts/install-test-tools.sh), cluster/build.sh and cluster/image.sh")
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="realnode-bench-") as tmp:
        work = Path(tmp)
        builds = {} if args.no_image_build else image_builds(work / "image")
        with Cluster(work / "cluster", nodes_count=0) as cluster:
            t0 = time.monotonic()
            nodes = RealNodes(cluster, 2).start()
            nodes_s = time.monotonic() - t0
            try:
                results = rounds(cluster, nodes, helm, work, args.rounds)
            finally:
                nodes.stop()
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if builds:
        print(f"image build: cold {builds['cold']:.0f} s, fresh {builds['fresh']:.1f} s, warm (launcher changed) "
              f"{builds['warm']:.0f} s; image {builds['size_mib']:.0f} MiB (docker archive, uncompressed)")
    print(f"2 real nodes Ready with the images imported: {nodes_s:.1f} s")
    installs, recoveries = [r[0] for r in results], [r[1] for r in results]
    print("| | median | min | max | rounds |\n|---|---|---|---|---|")
    for name, values in (("helm install -> first answer through the Service", installs),
                         ("leader pod deleted -> group answering again", recoveries)):
        print(f"| {name} | {statistics.median(values):.1f} s | {min(values):.1f} s | {max(values):.1f} s "
              f"| {len(values)} |")


if __name__ == "__main__":
    main()
