"""`helm upgrade` of a changed pod template on the real control plane: LWS rolls the release's groups
as lws.rollout says. A watch on the release's pods recounts the serving groups after every change
(every pod Ready, none terminating), so no dip between two samples goes unseen; the record is
printed. kwok turns pods Ready as soon as they run: "serving" here is what LWS itself counts as a
ready group (a real leader turns Ready when Triton's rank 0 is).

Groups of one pod (two GPUs per pod for tp 2), so a surge group fits the four one-pod nodes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, watch
from urllib3.exceptions import ProtocolError

from tests.cluster.helm import VALUES, Release, describe, group_pods_selector
from tests.cluster.lws import wait_for

pytestmark = pytest.mark.cluster

GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
ONE_POD_GROUPS = {**VALUES, "gpuPerNode": "2", "lws.replicas": "2"}


def serving_groups(pods: dict[str, Any]) -> int:
    groups: dict[str, list[bool]] = {}
    for pod in pods.values():
        ready = pod.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        groups.setdefault(pod.metadata.labels.get(GROUP_INDEX, "?"), []).append(ready)
    return sum(all(states) for states in groups.values())


@dataclass
class Record:
    """(seconds since the upgrade began, serving groups, pods) after every change the watch saw."""
    started: float = field(default_factory=time.monotonic)
    points: list[tuple[float, int, int]] = field(default_factory=list)
    broken: bool = False

    @property
    def floor(self) -> int:
        return min(serving for _, serving, _ in self.points)

    def __str__(self) -> str:
        return " ".join(f"{t:.2f}s:{serving}/{pods}" for t, serving, pods in self.points)


@contextmanager
def serving_record(core: client.CoreV1Api, ns: str, release: str) -> Iterator[Record]:
    selector = group_pods_selector(release)
    listed = core.list_namespaced_pod(ns, label_selector=selector)
    pods = {p.metadata.name: p for p in listed.items}
    record, stop = Record(), threading.Event()
    record.points.append((0.0, serving_groups(pods), len(pods)))
    stream = watch.Watch()

    def follow() -> None:
        try:
            for event in stream.stream(core.list_namespaced_pod, ns, label_selector=selector,
                                       resource_version=listed.metadata.resource_version, timeout_seconds=120):
                pod = event["object"]
                if event["type"] not in ("ADDED", "MODIFIED", "DELETED") or pod is None:
                    raise ProtocolError(f"watch event {event['type']} without a pod")  # an ERROR event, say
                if event["type"] == "DELETED":
                    pods.pop(pod.metadata.name, None)
                else:
                    pods[pod.metadata.name] = pod
                record.points.append((time.monotonic() - record.started, serving_groups(pods), len(pods)))
        except ProtocolError:
            if not stop.is_set():  # the stream closed or failed under us: the record would be partial
                record.broken = True

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        stream.stop()
        thread.join(10)


def rolled(core: client.CoreV1Api, ns: str, release: str, marker: str) -> bool:
    pods = core.list_namespaced_pod(ns, label_selector=group_pods_selector(release)).items
    return len(pods) == 2 and serving_groups({p.metadata.name: p for p in pods}) == 2 and all(
        (p.metadata.annotations or {}).get("example.com/rollout") == marker for p in pods)


@pytest.mark.parametrize(("unavailable", "surge", "floor"), [("1", "0", 1), ("0", "1", 2)],
                         ids=["one-group-at-a-time", "surge-keeps-two"])
def test_a_changed_template_rolls_out_above_the_floor(cluster: Any, helm_in: Release, unavailable: str, surge: str,
                                                      floor: int) -> None:
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    values = {**ONE_POD_GROUPS, "lws.rollout.maxUnavailable": unavailable, "lws.rollout.maxSurge": surge,
              "podAnnotations.example\\.com/rollout": "first"}
    helm_in.install("roll", values)
    wait_for("two serving groups", lambda: rolled(core, ns, "roll", "first"), lambda: describe(core, ns))
    with serving_record(core, ns, "roll") as record:
        helm_in.upgrade("roll", {**values, "podAnnotations.example\\.com/rollout": "second"})
        wait_for("the rollout to finish", lambda: rolled(core, ns, "roll", "second"), lambda: describe(core, ns),
                 timeout=120)
    took = record.points[-1][0]
    print(f"\nmaxUnavailable {unavailable}, maxSurge {surge}: floor {record.floor} serving groups, "
          f"rollout {took:.2f}s; record: {record}")
    assert not record.broken, "the watch ended during the rollout"
    assert record.floor == floor, str(record)
    assert max(pods for _, _, pods in record.points) <= 2 + int(surge), str(record)
