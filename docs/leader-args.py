#!/usr/bin/env python3
"""Print the leader's launcher arguments from rendered chart manifests, one per line.

    helm template NAME ./chart --values my-values.yaml | python3 docs/leader-args.py > leader-args.txt
    mapfile -t ARGS < leader-args.txt
    launcher dry-run "${ARGS[@]}" --lws-name NAME-lws-triton

The first argument (the command, "leader") is left out. Needs PyYAML.
"""

from __future__ import annotations

import sys

import yaml


def leader_args(manifests: str) -> list[str]:
    for doc in yaml.safe_load_all(manifests):
        if doc and doc.get("kind") == "LeaderWorkerSet":
            container = doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
            args = list(container.get("args", []))
            if args and not args[0].startswith("-"):
                args = args[1:]
            return args
    raise SystemExit("leader-args.py: no LeaderWorkerSet in the input (pipe `helm template` into it)")


if __name__ == "__main__":
    print("\n".join(leader_args(sys.stdin.read())))
