"""LeaderWorkerSet groups and the launcher's RBAC on the test control plane (tests and benchmarks)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
NAME = "leaderworkerset.sigs.k8s.io/name"
SLEEP = ["sleep", "infinity"]


def lws(name: str, size: int = 2, worker: dict[str, Any] | None = None, leader: dict[str, Any] | None = None,
        command: list[str] | None = None, env: list[dict[str, Any]] | None = None,
        restart_policy: str | None = None) -> dict[str, Any]:
    """A one-replica LWS; ``worker``/``leader`` are extra pod-spec fields (nodeSelector, resources via
    ``container``). Both templates carry the group key and namespace in the launcher's variables.
    ``restart_policy``: LWS's own (default RecreateGroupOnPodRestart)."""
    def template(extra: dict[str, Any] | None) -> dict[str, Any]:
        extra = dict(extra or {})
        container = {"name": "main", "image": "example.invalid/launcher:test", "command": command or SLEEP,
                     "env": [*(env or []),
                             {"name": "LAUNCHER_GROUP_KEY",
                              "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{GROUP_KEY}']"}}},
                             {"name": "LAUNCHER_NAMESPACE",
                              "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                             {"name": "LAUNCHER_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "LAUNCHER_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
                     **extra.pop("container", {})}
        return {"spec": {"containers": [container], **extra}}

    spec: dict[str, Any] = {"size": size, "workerTemplate": template(worker)}
    if leader is not None:
        spec["leaderTemplate"] = template(leader)
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "leaderWorkerTemplate": spec}}


def apply_lws(api: client.ApiClient, ns: str, manifest: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets", manifest)


def grant_launcher_role(api: client.ApiClient, ns: str, exec_too: bool = True) -> None:
    """The chart's Role (pods get/list/watch; pods/exec create+get) bound to the namespace's default SA."""
    rules: list[dict[str, Any]] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    if exec_too:
        rules.append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]})
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(ns, {"metadata": {"name": "launcher"}, "rules": rules})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "launcher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "launcher"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})


def pods_of(api: client.ApiClient, ns: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"{NAME}={name}").items
    return sorted(pods, key=lambda p: int((p.metadata.labels or {}).get(WORKER_INDEX, "-1")))


def running_group(api: client.ApiClient, ns: str, name: str, size: int) -> list[client.V1Pod] | None:
    pods = [p for p in pods_of(api, ns, name) if p.metadata.deletion_timestamp is None]
    if len(pods) != size or any(p.status.phase != "Running" or not p.status.pod_ip for p in pods):
        return None
    return pods


def wait_group(api: client.ApiClient, ns: str, name: str, size: int, timeout: float = 60,
               not_uids: set[str] = frozenset()) -> list[client.V1Pod]:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = running_group(api, ns, name, size)
        if pods and not any(p.metadata.uid in not_uids for p in pods):
            return pods
        time.sleep(0.05)
    now = [(p.metadata.name, p.status.phase, p.status.pod_ip, p.spec.node_name, scheduling(p))
           for p in pods_of(api, ns, name)]
    others = [(p.metadata.namespace, p.metadata.name, p.spec.node_name, p.status.phase)
              for p in client.CoreV1Api(api).list_pod_for_all_namespaces().items if p.metadata.namespace != ns]
    raise AssertionError(f"group {name} of {size} not Running after {timeout}s: {now}; other pods: {others}")


def scheduling(pod: client.V1Pod) -> str:
    """The scheduler's last word on a pod ("" once scheduled)."""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status != "True":
            return f"{condition.reason}: {condition.message}"
    return ""


def group_key(pod: client.V1Pod) -> str:
    return str(pod.metadata.labels[GROUP_KEY])


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], now: Callable[[], Any], timeout: float = 60,
             interval_s: float = 0.1) -> T:
    """The first truthy result of ``check``; on timeout, fail saying what was awaited and ``now()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; now: {now()!r}")
