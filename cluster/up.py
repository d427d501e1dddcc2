"""Start the test cluster by hand and keep it up until Ctrl-C.

    .venv/bin/python -m cluster.up [--nodes N] [--real-nodes N] [--workdir DIR]    # as root, from the repo root
"""
from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .controlplane import Cluster
from .realnode import RealNodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--pods-per-node", type=int, default=1)
    ap.add_argument("--real-nodes", type=int, default=0, help="kubelets with containerd beside the kwok nodes")
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kube-cluster-"))
    try:
        run(workdir, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(workdir: Path, args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    with Cluster(workdir, nodes_count=args.nodes, pods_per_node=args.pods_per_node) as c:
        print(f"up in {c.timings['total']:.1f}s {c.timings}")
        real = RealNodes(c, args.real_nodes).start() if args.real_nodes else None
        if real is not None:
            print(f"real nodes {[n.name for n in real.nodes]}; image {real.image}")
        print(f"export KUBECONFIG={c.kubeconfig}   # logs: {c.logs}")
        for n in c.nodes:
            print(f"  {n.name}: {n.ip}  (enter: nsenter -t {n.sandbox.pid} -n -u -m)")
        try:
            while True:
                c.check()
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopping")
        finally:
            if real is not None:
                real.stop()


if __name__ == "__main__":
    main()
