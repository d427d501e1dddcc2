"""Kubernetes discovery and supervision logic without a cluster: pod narrowing, group evaluation,
change detection, and the Supervisor's group check (with a plain process for mpirun)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from launcher.errors import ConfigError, ExitCode, LauncherError
from launcher.k8s import GROUP_KEY_LABEL, WORKER_INDEX_LABEL, KubernetesGroup, resolve_namespace
from launcher.k8s.pods import (
    GroupIdentity,
    PodState,
    change_of,
    inferred_identity,
    members_if_complete,
    pod_state,
    screen,
)
from launcher.k8s.watch import access_error
from launcher.outcome import Ended, Outcome, exit_code, finish
from launcher.plan import Member
from tests.unit.supervising import supervise


def v1pod(name: str, index: str | None, phase: str | None = "Running", ip: str | None = "10.0.0.1",
          uid: str = "u1", deleting: bool = False, restarts: int = 0, ready: bool = True,
          conditions: list[client.V1PodCondition] | None = None,
          waiting: client.V1ContainerStateWaiting | None = None,
          owners: list[client.V1OwnerReference] | None = None) -> client.V1Pod:
    labels = {GROUP_KEY_LABEL: "k"} | ({WORKER_INDEX_LABEL: index} if index is not None else {})
    statuses = [client.V1ContainerStatus(
        name="main", image="i", image_id="", ready=ready, restart_count=restarts,
        state=client.V1ContainerState(waiting=waiting))]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, uid=uid, labels=labels, owner_references=owners,
                                     deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None),
        status=client.V1PodStatus(phase=phase, pod_ip=ip, conditions=conditions, container_statuses=statuses))


def state(name: str, index: int | None, phase: str = "Running", ip: str = "10.0.0.1", uid: str = "u1",
          terminating: bool = False, restarts: int = 0, ready: bool = True, reason: str = "",
          controller: str | None = None) -> PodState:
    """A pod as LWS makes it: g-0 controlled by StatefulSet g, g-0-N by StatefulSet g-0 (unless told)."""
    owner = f"StatefulSet/{name.rsplit('-', 1)[0]}" if controller is None else controller
    return PodState(name, uid, index, phase, ip, terminating, restarts, ready, reason, owner)


GROUP = GroupIdentity("g-0", "u1")


def members(pods: list[PodState], size: int) -> tuple[list[Member] | None, list[str]]:
    return members_if_complete(screen(pods, size, GROUP)[0], size)


def test_pod_state_narrows_optional_fields() -> None:
    bare = client.V1Pod(metadata=client.V1ObjectMeta(name="p"))
    assert pod_state(bare) == state("p", None, phase="Pending", ip="", uid="", ready=False, controller="")
    assert pod_state(v1pod("w", "2", restarts=3, uid="x")) == state("w", 2, uid="x", restarts=3, controller="")
    owners = [client.V1OwnerReference(api_version="v1", kind="Pod", name="x", uid="1"),
              client.V1OwnerReference(api_version="apps/v1", kind="StatefulSet", name="g-0", uid="2", controller=True)]
    assert pod_state(v1pod("g-0-1", "1", owners=owners)).controller == "StatefulSet/g-0"
    assert pod_state(v1pod("w", "two")).worker_index is None
    assert pod_state(v1pod("w", "1", deleting=True)).terminating


def test_reason_prefers_unschedulable_then_waiting_container() -> None:
    unschedulable = client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                          message="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    pod = pod_state(v1pod("w", "1", phase="Pending", ip=None, conditions=[unschedulable]))
    assert pod.describe() == "Pending (Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.)"
    pulling = client.V1ContainerStateWaiting(reason="ImagePullBackOff", message="back-off pulling")
    assert pod_state(v1pod("w", "1", phase="Pending", ip=None, waiting=pulling)).reason == \
        "ImagePullBackOff: back-off pulling"


def test_members_in_integer_worker_index_order_once_all_run() -> None:
    pods = [state(f"g-0-{i}" if i else "g-0", i, ip=f"10.0.0.{i}") for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]
    found, missing = members(pods, 11)
    assert missing == [] and found is not None
    assert [m.worker_index for m in found] == list(range(11))
    assert found[10] == Member("g-0-10", "10.0.0.10", 10, "u1")


def test_missing_workers_are_named_with_phase_and_reason() -> None:
    pods = [state("g-0", 0), state("g-0-1", 1, phase="Pending", ip="", reason="Unschedulable: no gpu"),
            state("g-0-3", 3, terminating=True), state("g-0-4", 4, ip="")]
    found, missing = members(pods, 5)
    assert found is None
    assert missing == ["worker 1: Pending (Unschedulable: no gpu)", "worker 2: no pod yet",
                       "worker 3: Terminating", "worker 4: Running without a pod IP"]


def test_only_pods_named_and_controlled_as_lws_makes_them_are_members() -> None:
    pods = [state("g-0", 0), state("g-0-1", 1, ip="10.0.0.2"),
            state("a-rogue", 1, ip="10.6.6.6"),  # the group's labels, another name
            state("g-0-2", 2, controller="StatefulSet/evil"),  # the right name, another controller
            state("g-0-3", 3, controller=""),  # no controller at all
            state("g-7", 0, controller="StatefulSet/g"),  # another group's leader name
            state("stray", 7), state("nolabel", None)]
    chosen, refused = screen(pods, 4, GROUP)
    assert {i: p.name for i, p in chosen.items()} == {0: "g-0", 1: "g-0-1"}
    assert [(p.name, why) for p, why in refused] == [
        ("a-rogue", "worker 1 of this group is named g-0-1"),
        ("g-0-2", "it is controlled by StatefulSet/evil, not StatefulSet/g-0"),
        ("g-0-3", "it is controlled by nothing, not StatefulSet/g-0"),
        ("g-7", "worker 0 of this group is named g-0")]
    assert screen([state("g-0", 0, uid="other")], 1, GROUP)[1][0][1] == "its uid is other, not this leader's u1"


def test_two_accepted_pods_for_one_index_are_an_error_not_a_choice() -> None:
    with pytest.raises(LauncherError) as info:
        screen([state("g-0", 0), state("g-0-1", 1, uid="a"), state("g-0-1", 1, uid="b", terminating=True)], 2, GROUP)
    assert info.value.exit_code == ExitCode.GROUP_CHANGED
    assert str(info.value) == ("discovery: worker 1 has 2 candidate pods (g-0-1 (uid a), g-0-1 (uid b)); "
                               "LeaderWorkerSet makes one per index: delete the pods that are not the group's")


def test_without_its_own_name_the_identity_comes_from_the_lws_shaped_leader() -> None:
    assert inferred_identity([state("g-0-1", 1)]) is None
    assert inferred_identity([state("g-0", 0, controller="StatefulSet/x"), state("g-0-1", 1)]) is None
    assert inferred_identity([state("g-0", 0, uid="u9"), state("a-rogue", 1)]) == GroupIdentity("g-0", "u9")
    with pytest.raises(LauncherError, match="worker 0 has 2 candidate pods"):
        inferred_identity([state("g-0", 0), state("h-1", 0)])


def test_a_rogue_pod_is_reported_once_and_never_a_member(caplog: pytest.LogCaptureFixture) -> None:
    group = KubernetesGroup("ns", "k", 2, 1.0, identity=GROUP)
    pods = [state("g-0", 0), state("a-rogue", 1, uid="r1")]
    for _ in range(3):
        assert {i: p.name for i, p in group._screen(pods).items()} == {0: "g-0"}
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "discovery: ignoring pod a-rogue: it has group key k and worker index 1 but worker 1 of this group is "
        "named g-0-1"]


def test_change_of_a_worker_pod() -> None:
    base = state("w", 1, uid="a", restarts=1)
    assert change_of(base, base) is None
    assert change_of(base, None) == "pod w (worker 1) was deleted"
    assert change_of(base, dataclasses.replace(base, uid="b")) == "pod w (worker 1) was replaced (new uid b)"
    assert change_of(base, dataclasses.replace(base, terminating=True)) == "pod w (worker 1) is terminating"
    assert change_of(base, dataclasses.replace(base, phase="Failed")) == "pod w (worker 1) is Failed"
    assert change_of(base, dataclasses.replace(base, restarts=2)) == "pod w (worker 1) restarted (restarts 1 -> 2)"


def test_access_errors_name_verb_and_resource() -> None:
    error = access_error(403, "watch", "ns1")
    assert error.exit_code == ExitCode.FORBIDDEN == 81
    assert str(error).startswith("forbidden: cannot watch pods in namespace ns1; the launcher's Role needs "
                                 "get/list/watch on pods")
    assert access_error(401, "list", "ns1").exit_code == ExitCode.FORBIDDEN


def test_namespace_from_flag_else_service_account_file(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert resolve_namespace("given", sa) == "given"
    with pytest.raises(ConfigError, match="--namespace is not set"):
        resolve_namespace(None, sa)
    sa.write_text("from-sa\n")
    assert resolve_namespace(None, sa) == "from-sa"


def test_changed_is_none_before_discovery() -> None:
    assert KubernetesGroup("ns", "k", 2, 1.0).changed() is None


DELETED = Outcome(Ended.GROUP_CHANGED, "pod w (worker 1) was deleted: stopping the launch")


def test_supervisor_stops_the_launch_when_the_group_changes() -> None:
    calls = []

    def changed() -> Outcome | None:
        calls.append(time.monotonic())
        return DELETED if len(calls) > 3 else None

    outcome, took = supervise(changed, (sys.executable, "-c", "import time; time.sleep(30)"))
    assert outcome == DELETED and exit_code(outcome) == ExitCode.GROUP_CHANGED and took < 3


def test_a_pod_change_seen_just_after_mpirun_fails_names_the_cause() -> None:
    seen: list[float] = []

    def changed() -> Outcome | None:
        seen.append(time.monotonic())
        return DELETED if len(seen) > 2 else None

    outcome, _ = supervise(changed, (sys.executable, "-c", "raise SystemExit(1)"))
    assert outcome == DELETED


def test_mpirun_failure_without_a_pod_change_keeps_its_status() -> None:
    outcome, took = supervise(lambda: None, (sys.executable, "-c", "raise SystemExit(3)"))
    assert outcome.ended is Ended.MPIRUN_FAILED and exit_code(outcome) == 3 and took >= 1.0


@pytest.mark.parametrize("ended,code", [(Ended.STOPPED, 0), (Ended.RANK_LOST, 78), (Ended.STARTUP_TIMEOUT, 77),
                                        (Ended.GROUP_CHANGED, 79), (Ended.FORBIDDEN, 81)])
def test_each_outcome_has_its_exit_code(ended: Ended, code: int) -> None:
    outcome = Outcome(ended, "why")
    assert exit_code(outcome) == code
    if code:
        with pytest.raises(LauncherError) as info:
            finish(outcome)
        assert (info.value.exit_code, str(info.value)) == (code, "why")
    else:
        assert finish(outcome) == 0


def test_a_watch_refused_while_serving_ends_as_forbidden_not_as_a_group_change() -> None:
    class Refused:
        def snapshot(self) -> None:
            raise access_error(403, "watch", "ns1")

    group = KubernetesGroup("ns1", "k", 2, 1.0)
    group._watch, group._baseline = Refused(), [object()]  # type: ignore[assignment,list-item]
    outcome = group.changed()
    assert outcome is not None and outcome.ended is Ended.FORBIDDEN and exit_code(outcome) == 81


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: serving}}]
current-context: x
"""


@pytest.mark.parametrize("group_key,code", [(None, ExitCode.CONFIG_INVALID), ("abc", None)])
def test_kubessh_probe_ends_readiness_at_once_only_for_what_waiting_cannot_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_key: str | None, code: ExitCode | None) -> None:
    """No group key: kubessh refuses before any API call, so readiness fails now, not after its timeout.
    With a key, an API server that does not answer is worth waiting for until the deadline."""
    from launcher.discovery import wait_until_reachable

    (tmp_path / "config").write_text(KUBECONFIG)
    # the client reads $KUBECONFIG once, when it is imported
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "config"))
    # the environment the leader hands the agent is the one kubessh obeys, not the process's own
    monkeypatch.setenv("KUBESSH_RETRY_S", "60")
    environ = {"KUBESSH_RETRY_S": "0.2", **({"LAUNCHER_GROUP_KEY": group_key} if group_key else {})}
    begun = time.monotonic()
    with pytest.raises(LauncherError) as info:
        wait_until_reachable("kubessh", [Member("w-0-1", "w-0-1", 1)], 1.0, threading.Event(), environ,
                             interval_s=0.1)
    if code is not None:
        assert info.value.exit_code == code and "kubessh cannot enter w-0-1: no group key" in str(info.value)
        assert time.monotonic() - begun < 1.0
    else:
        assert info.value.exit_code == ExitCode.WORKERS_UNREACHABLE, str(info.value)
        assert "w-0-1: kubessh: cannot reach the API server" in str(info.value)
