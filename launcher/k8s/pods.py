"""Pure views of the group's pods: what discovery and supervision decide on.

The client's models mark nearly every field Optional; ``pod_state`` narrows
them once, so everything after it works on plain values and is unit tested
without a cluster.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError, ExitCode, LauncherError
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
    controller: str = ""  # KIND/NAME of its controlling owner reference ("" if none)

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


def _controller(meta: Any) -> str:
    for owner in meta.owner_references or []:
        if owner.controller:
            return f"{owner.kind}/{owner.name}"
    return ""


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
        controller=_controller(meta),
    )


_LEADER_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?)-(0|[1-9][0-9]*)\Z")


@dataclasses.dataclass(frozen=True)
class GroupIdentity:
    """The pods LeaderWorkerSet makes for one group: the leader ``<lws>-<group>``, controlled by the
    StatefulSet ``<lws>``, and worker i ``<leader>-<i>``, controlled by the StatefulSet ``<leader>``.
    A name is unique in its namespace; labels can be copied by anyone who may create pods."""

    leader: str
    leader_uid: str

    def expected(self, index: int) -> tuple[str, str]:
        """(pod name, controlling owner) of worker ``index``."""
        if index == 0:
            return self.leader, f"StatefulSet/{self.leader.rsplit('-', 1)[0]}"
        return f"{self.leader}-{index}", f"StatefulSet/{self.leader}"

    def refusal(self, pod: PodState, index: int) -> str | None:
        """Why ``pod``, labelled worker ``index``, is not that worker of this group; None if it is."""
        name, owner = self.expected(index)
        if pod.name != name:
            return f"worker {index} of this group is named {name}"
        if pod.controller != owner:
            return f"it is controlled by {pod.controller or 'nothing'}, not {owner}"
        if index == 0 and pod.uid != self.leader_uid:
            return f"its uid is {pod.uid}, not this leader's {self.leader_uid}"
        return None


def check_leader_name(name: str) -> None:
    if not _LEADER_NAME.match(name):
        raise ConfigError(f"--pod-name={name!r}: a LeaderWorkerSet leader pod is named <lws>-<group index>; set "
                          "LAUNCHER_POD_NAME from the leader pod's downward API (fieldRef metadata.name)")


def inferred_identity(pods: Iterable[PodState]) -> GroupIdentity | None:
    """The identity a worker-0 pod shaped as LWS makes its leader names, for callers that do not know
    their own pod (tools, tests); None while there is none. The leader itself is always told its name."""
    leaders = [p for p in pods if p.worker_index == 0 and _LEADER_NAME.match(p.name)
               and p.controller == f"StatefulSet/{p.name.rsplit('-', 1)[0]}"]
    if len(leaders) > 1:
        raise ambiguous(0, leaders)
    return GroupIdentity(leaders[0].name, leaders[0].uid) if leaders else None


def ambiguous(index: int, pods: list[PodState]) -> LauncherError:
    found = ", ".join(f"{p.name} (uid {p.uid})" for p in pods)
    return LauncherError(f"discovery: worker {index} has {len(pods)} candidate pods ({found}); LeaderWorkerSet "
                         "makes one per index: delete the pods that are not the group's", ExitCode.GROUP_CHANGED)


def screen(pods: Iterable[PodState], size: int, identity: GroupIdentity | None
           ) -> tuple[dict[int, PodState], list[tuple[PodState, str]]]:
    """The one pod of each worker index in range that ``identity`` accepts, and the pods it refused with
    why. No identity yet (nothing accepted): every labelled pod waits. Two accepted for one index raise."""
    chosen: dict[int, PodState] = {}
    refused: list[tuple[PodState, str]] = []
    for pod in sorted(pods, key=lambda p: p.name):
        index = pod.worker_index
        if index is None or not 0 <= index < size or identity is None:
            continue
        why = identity.refusal(pod, index)
        if why is not None:
            refused.append((pod, why))
        elif index in chosen:
            raise ambiguous(index, [chosen[index], pod])
        else:
            chosen[index] = pod
    return chosen, refused


def members_if_complete(chosen: Mapping[int, PodState], size: int) -> tuple[list[Member] | None, list[str]]:
    """The members in worker-index order once every index runs, else None and what is missing."""
    missing = []
    for index in range(size):
        pod = chosen.get(index)
        if pod is None:
            missing.append(f"worker {index}: no pod yet")
        elif not pod.running:
            missing.append(f"worker {index}: {pod.describe()}")
    if missing:
        return None, missing
    return [Member(chosen[i].name, chosen[i].ip, i, chosen[i].uid) for i in range(size)], []


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
