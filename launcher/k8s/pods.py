"""Pure views of the group's pods: what discovery and supervision decide on.

The client's models mark nearly every field Optional; ``pod_state`` narrows
them once, so everything after it works on plain values and is unit tested
without a cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ..plan import Member

GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


@dataclasses.dataclass(frozen=True)
class PodState:
    name: str
    uid: str
    worker_index: int | None  # None: no (integer) worker-index label
    phase: str
    ip: str
    terminating: bool
    restarts: int  # sum of the containers' restart counts
    ready: bool  # every container ready
    reason: str  # why it is not running yet ("" when nothing to say)

    @property
    def running(self) -> bool:
        """Usable by the launch: Running with an address and not being deleted."""
        return self.phase == "Running" and bool(self.ip) and not self.terminating

    def describe(self) -> str:
        if self.terminating:
            return "Terminating"
        if self.phase == "Running" and not self.ip:
            return "Running without a pod IP"
        return f"{self.phase} ({self.reason})" if self.reason else self.phase


def _index(labels: Mapping[str, str]) -> int | None:
    try:
        return int(labels.get(WORKER_INDEX_LABEL, ""))
    except ValueError:
        return None


def _reason(status: Any) -> str:
    """The most telling reason a pod is not running: unschedulable, a waiting container, the pod's own."""
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return ": ".join(p for p in (condition.reason, condition.message) if p)
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return ": ".join(p for p in (waiting.reason, waiting.message) if p)
    return ": ".join(p for p in (status.reason, status.message) if p)


def pod_state(pod: Any) -> PodState:
    """Narrow a ``V1Pod`` to the fields the launcher decides on."""
    meta, status = pod.metadata, pod.status
    containers = (status.container_statuses or []) if status is not None else []
    return PodState(
        name=str(meta.name or ""),
        uid=str(meta.uid or ""),
        worker_index=_index(meta.labels or {}),
        phase=str((status.phase if status is not None else None) or "Pending"),
        ip=str((status.pod_ip if status is not None else None) or ""),
        terminating=meta.deletion_timestamp is not None,
        restarts=sum(int(c.restart_count or 0) for c in containers),
        ready=bool(containers) and all(bool(c.ready) for c in containers),
        reason=_reason(status) if status is not None else "",
    )


def best_per_index(pods: Iterable[PodState], size: int) -> dict[int, PodState]:
    """One pod per worker index in range; a replacement (not terminating) wins over the pod it replaces."""
    chosen: dict[int, PodState] = {}
    for pod in sorted(pods, key=lambda p: p.name):
        index = pod.worker_index
        if index is None or not 0 <= index < size:
            continue
        current = chosen.get(index)
        if current is None or (current.terminating and not pod.terminating):
            chosen[index] = pod
    return chosen


def members_if_complete(pods: Iterable[PodState], size: int) -> tuple[list[Member] | None, list[str]]:
    """The members in worker-index order once every index runs, else None and what is missing."""
    chosen = best_per_index(pods, size)
    missing = []
    for index in range(size):
        pod = chosen.get(index)
        if pod is None:
            missing.append(f"worker {index}: no pod yet")
        elif not pod.running:
            missing.append(f"worker {index}: {pod.describe()}")
    if missing:
        return None, missing
    return [Member(chosen[i].name, chosen[i].ip, i) for i in range(size)], []


def running_count(pods: Iterable[PodState], size: int) -> int:
    return sum(1 for pod in best_per_index(pods, size).values() if pod.running)


def change_of(baseline: PodState, now: PodState | None) -> str | None:
    """Why a worker pod that the launch runs on no longer serves it, or None."""
    name = baseline.name
    if now is None:
        return f"pod {name} (worker {baseline.worker_index}) was deleted"
    if now.uid != baseline.uid:
        return f"pod {name} (worker {baseline.worker_index}) was replaced (new uid {now.uid})"
    if now.terminating:
        return f"pod {name} (worker {baseline.worker_index}) is terminating"
    if now.phase != "Running":
        return f"pod {name} (worker {baseline.worker_index}) is {now.describe()}"
    if now.restarts > baseline.restarts:
        return f"pod {name} (worker {baseline.worker_index}) restarted (restarts {baseline.restarts} -> {now.restarts})"
    return None
