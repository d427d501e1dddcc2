"""Smoke test of the real control plane: LWS controller + webhook, scheduler, kwok, exec."""
from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream

from tests.cluster.lws import wait_for

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


def running_group(core: client.CoreV1Api, ns: str, name: str, size: int) -> list[client.V1Pod] | None:
    """The group's pods ordered by worker index once all are Running with an IP, else None."""
    pods = [p for p in core.list_namespaced_pod(ns, label_selector=f"{NAME}={name}").items
            if p.metadata.deletion_timestamp is None]
    if len(pods) != size or any(p.status.phase != "Running" or not p.status.pod_ip for p in pods):
        return None
    return sorted(pods, key=lambda p: int((p.metadata.labels or {}).get(WORKER_INDEX, "-1")))


def describe(core: client.CoreV1Api, ns: str) -> list[tuple[str, str, str, str]]:
    return [(p.metadata.name, str(p.spec.node_name), p.status.phase, str(p.status.pod_ip))
            for p in core.list_namespaced_pod(ns).items]


def pod_exec(api: client.ApiClient, ns: str, pod: str, cmd: list[str], timeout: float = 30) -> tuple[int, str, str]:
    """``cmd`` through the API's websocket exec: (0 on success else 1, stdout, stderr + failure message)."""
    resp = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, ns, command=cmd,
                  stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
    resp.run_forever(timeout=timeout)
    still_open = resp.is_open()
    status = yaml.safe_load(resp.read_channel(3) or "null")
    out, err = resp.read_stdout(), resp.read_stderr()
    resp.close()
    assert not still_open and status, f"exec {cmd} in {pod}: no result after {timeout}s"
    ok = status["status"] == "Success"
    return (0 if ok else 1), out, err + ("" if ok else status.get("message", ""))


@pytest.fixture
def group(cluster: Any, namespace: str) -> list[client.V1Pod]:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", lws("smoke"))
    core = client.CoreV1Api(cluster.api)
    return wait_for("leader and worker Running", lambda: running_group(core, namespace, "smoke", 2),  # type: ignore[no-any-return]
                lambda: describe(core, namespace))


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
    for pod in group:
        name, ip = pod.metadata.name, pod.status.pod_ip
        assert ip == cluster.node(pod.spec.node_name).ip  # a pod's IP is its node sandbox's address
        rc, out, err = pod_exec(cluster.api, namespace, name, ["hostname"])
        assert (rc, out, err) == (0, f"{name}\n", "")
        rc, out, err = pod_exec(cluster.api, namespace, name, ["ip", "-4", "-o", "addr", "show", "eth0"])
        assert rc == 0, err
        assert f"inet {ip}/" in out
        rc, out, err = pod_exec(cluster.api, namespace, name, ["sh", "-c", 'getent hosts "$(hostname)"'])
        assert rc == 0 and out.split() == [ip, f"{name}.smoke.{namespace}.svc.cluster.local", name], err


def test_exec_reports_failure(cluster: Any, namespace: str, group: list[client.V1Pod]) -> None:
    rc, out, err = pod_exec(cluster.api, namespace, group[1].metadata.name,
                            ["sh", "-c", "echo out; echo err >&2; exit 3"])
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
    new = wait_for("a new leader and worker", recreated, lambda: describe(core, namespace))
    assert [p.metadata.name for p in new] == list(old)


def test_cluster_keeps_working_after_an_apiserver_restart(cluster: Any, namespace: str) -> None:
    cluster.restart("kube-apiserver", down_s=1)
    core = client.CoreV1Api(cluster.api)
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", lws("again"))
    # After several apiserver restarts in one session (other cluster tests
    # restart it too) kube-scheduler's watches back off; it was seen to take
    # over 60 s to schedule again on this 2-core machine.
    pods = wait_for("a group after the restart", lambda: running_group(core, namespace, "again", 2),
                    lambda: describe(core, namespace), timeout=240)
    rc, out, err = pod_exec(cluster.api, namespace, pods[1].metadata.name, ["hostname"])
    assert (rc, out) == (0, "again-0-1\n"), err
    cluster.check()  # every component survived


IN_POD_LIST_PODS = """
from kubernetes import client, config
config.load_incluster_config()  # KUBERNETES_SERVICE_HOST/PORT + /var/run/secrets/kubernetes.io/serviceaccount
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
try:
    print(len(client.CoreV1Api().list_namespaced_pod(ns).items))
except client.ApiException as e:
    print(e.status)
"""


def test_pod_process_authenticates_as_its_service_account_under_rbac(cluster: Any, namespace: str,
                                                                     group: list[client.V1Pod]) -> None:
    def list_pods_from_leader() -> str:
        proc = cluster.popen_in_pod(namespace, group[0].metadata.name, ["python3", "-c", IN_POD_LIST_PODS],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return str(out.strip())

    assert list_pods_from_leader() == "403"  # authenticated, but the default ServiceAccount may not list pods
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})
    assert list_pods_from_leader() == "2"
