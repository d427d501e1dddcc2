"""Smoke test of the real control plane: LWS controller + webhook, scheduler, kwok, exec."""
from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream

pytestmark = pytest.mark.cluster

GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
NAME = "leaderworkerset.sigs.k8s.io/name"


def lws(name: str, size: int = 2) -> dict[str, Any]:
    container = {"name": "main", "image": "example.invalid/launcher:test", "command": ["sleep", "infinity"]}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {
            "size": size, "workerTemplate": {"spec": {"containers": [container]}}}},
    }


def wait(what: str, fn: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {fn()!r}")


def running_group(core: client.CoreV1Api, ns: str, name: str, size: int) -> list[client.V1Pod] | None:
    """The group's pods ordered by worker index once all are Running with an IP, else None."""
    pods = [p for p in core.list_namespaced_pod(ns, label_selector=f"{NAME}={name}").items
            if p.metadata.deletion_timestamp is None]
    if len(pods) != size or any(p.status.phase != "Running" or not p.status.pod_ip for p in pods):
        return None
    return sorted(pods, key=lambda p: int(p.metadata.labels[WORKER_INDEX]))


def pod_exec(api: client.ApiClient, ns: str, pod: str, cmd: list[str]) -> tuple[int, str, str]:
    resp = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, ns, command=cmd,
                  stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
    out, err = [], []
    resp.run_forever(timeout=30)
    out.append(resp.read_stdout())
    err.append(resp.read_stderr())
    error = yaml.safe_load(resp.read_channel(3) or "{}") or {}
    resp.close()
    rc = 0 if error.get("status", "Success") == "Success" else 1
    return rc, "".join(out), "".join(err) + (error.get("message") or "")


@pytest.fixture
def group(cluster: Any, namespace: str) -> list[client.V1Pod]:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", lws("smoke"))
    core = client.CoreV1Api(cluster.api)
    return wait("leader and worker Running", lambda: running_group(core, namespace, "smoke", 2))  # type: ignore[no-any-return]


def test_lws_creates_leader_and_worker_with_labels_and_env(cluster: Any, namespace: str,
                                                           group: list[client.V1Pod]) -> None:
    leader, worker = group
    assert leader.metadata.name == "smoke-0" and worker.metadata.name == "smoke-0-1"
    assert [p.metadata.labels[WORKER_INDEX] for p in group] == ["0", "1"]
    key = leader.metadata.labels[GROUP_KEY]
    assert key and worker.metadata.labels[GROUP_KEY] == key
    for index, pod in enumerate(group):
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_LEADER_ADDRESS"] == f"smoke-0.smoke.{namespace}"
        assert env["LWS_WORKER_INDEX"] == str(index)


def test_each_pod_has_its_own_sandbox_address_and_exec_runs_there(cluster: Any, namespace: str,
                                                                  group: list[client.V1Pod]) -> None:
    ips = [p.status.pod_ip for p in group]
    assert len(set(ips)) == 2
    hostnames = []
    for pod in group:
        node = cluster.node(pod.spec.node_name)
        assert pod.status.pod_ip == node.ip  # a pod's IP is its node sandbox's address
        rc, out, err = pod_exec(cluster.api, namespace, pod.metadata.name, ["hostname"])
        assert rc == 0, err
        hostnames.append(out.strip())
        assert out.strip() == node.name
        rc, out, err = pod_exec(cluster.api, namespace, pod.metadata.name, ["ip", "-4", "-o", "addr", "show", "eth0"])
        assert rc == 0, err
        assert f"inet {pod.status.pod_ip}/" in out
    assert len(set(hostnames)) == 2


def test_exec_reports_failure(cluster: Any, namespace: str, group: list[client.V1Pod]) -> None:
    rc, out, err = pod_exec(cluster.api, namespace, group[1].metadata.name, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (rc, out, err.splitlines()[0]) == (1, "out\n", "err")
    assert "exit status 3" in err


def test_process_in_one_pod_reaches_another_pod_by_ip(cluster: Any, namespace: str,
                                                      group: list[client.V1Pod]) -> None:
    leader, worker = group
    server = cluster.popen_in_pod(namespace, worker.metadata.name,
                                  ["python3", "-m", "http.server", "8080", "--bind", worker.status.pod_ip])
    try:
        sa = cluster.sandbox_of(namespace, worker.metadata.name).path("/run/secrets/kubernetes.io/serviceaccount")
        assert (sa / "namespace").read_text() == namespace and (sa / "token").read_text().count(".") == 2
        env = cluster.pod_env(namespace, worker.metadata.name)
        assert env["LWS_WORKER_INDEX"] == "1" and env["KUBERNETES_SERVICE_HOST"] == cluster.server_ip
        fetch = ("import sys, time, urllib.request\nfor _ in range(50):\n  try:\n"
                 f"    print(urllib.request.urlopen('http://{worker.status.pod_ip}:8080/').status); sys.exit(0)\n"
                 "  except OSError: time.sleep(0.1)\nsys.exit(1)")
        rc, out, err = pod_exec(cluster.api, namespace, leader.metadata.name, ["python3", "-c", fetch])
        assert (rc, out.strip()) == (0, "200"), err
    finally:
        server.kill()
        server.wait()


def test_deleting_worker_pod_recreates_the_group(cluster: Any, namespace: str, group: list[client.V1Pod]) -> None:
    core = client.CoreV1Api(cluster.api)
    old = {p.metadata.name: p.metadata.uid for p in group}
    core.delete_namespaced_pod(group[1].metadata.name, namespace)

    def recreated() -> list[client.V1Pod] | None:
        pods = running_group(core, namespace, "smoke", 2)
        return pods if pods and all(old[p.metadata.name] != p.metadata.uid for p in pods) else None
    new = wait("a new leader and worker", recreated)
    assert [p.metadata.name for p in new] == list(old)
