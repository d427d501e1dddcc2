"""Kubernetes discovery against the real control plane: LWS controller, scheduler, kwok pods."""
from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from launcher.errors import ExitCode, LauncherError
from launcher.k8s import KubernetesGroup
from launcher.plan import Member
from tests.cluster.lws import apply_lws, grant_launcher_role, group_key, lws, pods_of, wait_group

pytestmark = pytest.mark.cluster

# The launcher's discovery as the leader pod's own process: in-cluster config, the pod's token, RBAC.
IN_POD_DISCOVER = """
import json, logging, os, sys, threading
from launcher.errors import LauncherError
from launcher.k8s import KubernetesGroup, resolve_namespace
logging.basicConfig(level=logging.INFO, format="%(message)s")
group = KubernetesGroup(resolve_namespace(None), os.environ["LAUNCHER_GROUP_KEY"], int(sys.argv[1]), float(sys.argv[2]))
try:
    print(json.dumps([[m.pod, m.address, m.worker_index] for m in group(threading.Event())]))
except LauncherError as e:
    print(e, file=sys.stderr); sys.exit(int(e.exit_code))
finally:
    group.close()
"""


def discover_in_pod(cluster: Any, ns: str, pod: str, size: int, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = cluster.popen_in_pod(ns, pod, [sys.executable, "-c", IN_POD_DISCOVER, str(size), str(timeout_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout_s + 30)
    return proc.returncode, out, err


def discover_from_test(cluster: Any, ns: str, key: str, size: int, timeout_s: float,
                       stop: threading.Event | None = None) -> list[Member]:
    group = KubernetesGroup(ns, key, size, timeout_s, api_client=lambda: cluster.api)
    try:
        return list(group(stop or threading.Event()))
    finally:
        group.close()


def test_discovers_own_group_in_worker_index_order_never_another(cluster: Any, namespace: str) -> None:
    grant_launcher_role(cluster.api, namespace)
    apply_lws(cluster.api, namespace, lws("other", 1))
    apply_lws(cluster.api, namespace, lws("big", 3))
    pods = wait_group(cluster.api, namespace, "big", 3)
    wait_group(cluster.api, namespace, "other", 1)
    rc, out, err = discover_in_pod(cluster, namespace, pods[0].metadata.name, 3)
    assert rc == 0, err
    assert json.loads(out) == [[p.metadata.name, p.status.pod_ip, i] for i, p in enumerate(pods)]
    assert "discovery: 3/3 pods running" in err


def test_missing_permission_is_one_line_with_its_own_exit_code(cluster: Any, namespace: str) -> None:
    apply_lws(cluster.api, namespace, lws("noperm", 1))
    pods = wait_group(cluster.api, namespace, "noperm", 1)
    rc, out, err = discover_in_pod(cluster, namespace, pods[0].metadata.name, 1, timeout_s=10)
    assert rc == ExitCode.FORBIDDEN == 81
    assert err.strip().splitlines()[-1] == (
        f"forbidden: cannot list pods in namespace {namespace}; the launcher's Role needs get/list/watch "
        "on pods (and create/get on pods/exec for kubessh)")


def test_timeout_names_each_missing_worker_with_phase_and_reason(cluster: Any, namespace: str) -> None:
    too_many_gpus = {"container": {"resources": {"limits": {"nvidia.com/gpu": "16"}}}}
    apply_lws(cluster.api, namespace, lws("starved", 3, worker=too_many_gpus, leader={}))
    deadline = time.monotonic() + 30
    while not (pods := pods_of(cluster.api, namespace, "starved")) or pods[0].status.phase != "Running":
        assert time.monotonic() < deadline, "the leader pod never ran"
        time.sleep(0.1)
    begun = time.monotonic()
    with pytest.raises(LauncherError) as caught:
        discover_from_test(cluster, namespace, group_key(pods[0]), 3, timeout_s=3)
    assert 3 <= time.monotonic() - begun < 5
    assert caught.value.exit_code == ExitCode.DISCOVERY_TIMEOUT
    message = str(caught.value)
    assert message.startswith(f"discovery: 1/3 pods of group {group_key(pods[0])} running"), message
    for index in (1, 2):
        assert f"worker {index}: Pending (Unschedulable: 0/" in message
    assert "Insufficient nvidia.com/gpu" in message and "worker 0" not in message
    assert "\n" not in message


def _pending_worker_group(cluster: Any, ns: str, name: str) -> list[client.V1Pod]:
    """A group of 2 whose worker waits for a node labelled launcher-test=gpu (none is yet; the tests
    label the last node). The leader is placed on the first node: had the scheduler put it on the
    last one, that node would be full (one pod per node) and the worker never scheduled."""
    leader = {"nodeName": cluster.nodes[0].name}
    apply_lws(cluster.api, ns, lws(name, 2, worker={"nodeSelector": {"launcher-test": "gpu"}}, leader=leader))
    deadline = time.monotonic() + 30
    while len(pods := pods_of(cluster.api, ns, name)) < 2 or not group_key(pods[0]):
        assert time.monotonic() < deadline, "LWS did not create the group"
        time.sleep(0.1)
    return pods


def _label_node(cluster: Any, node: str, value: str | None) -> None:
    client.CoreV1Api(cluster.api).patch_node(node, {"metadata": {"labels": {"launcher-test": value}}})


def test_discovery_recovers_from_an_apiserver_restart(cluster: Any, namespace: str) -> None:
    """The watch is open, the apiserver goes away and comes back, then the worker gets scheduled."""
    pods = _pending_worker_group(cluster, namespace, "restart")
    node = cluster.nodes[-1].name
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(discover_from_test, cluster, namespace, group_key(pods[0]), 2, 90.0)
        time.sleep(1.0)  # listed, watching
        cluster.restart("kube-apiserver", down_s=1)
        _label_node(cluster, node, "gpu")
        try:
            members = future.result(timeout=100)
        finally:
            _label_node(cluster, node, None)
    pods = wait_group(cluster.api, namespace, "restart", 2)
    assert members == [Member(p.metadata.name, p.status.pod_ip, i) for i, p in enumerate(pods)]
    assert members[1].address == cluster.node(node).ip
    cluster.check()


def test_pods_replaced_during_the_wait_are_followed(cluster: Any, namespace: str) -> None:
    """The waiting worker is deleted (LWS recreates the whole group), then becomes schedulable."""
    pods = _pending_worker_group(cluster, namespace, "moving")
    first = {pods[1].metadata.uid}  # LWS may keep the leader when a worker that never ran is deleted
    node = cluster.nodes[-1].name
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(discover_from_test, cluster, namespace, group_key(pods[0]), 2, 60.0)
        time.sleep(1.0)
        client.CoreV1Api(cluster.api).delete_namespaced_pod(pods[1].metadata.name, namespace)
        time.sleep(1.0)
        _label_node(cluster, node, "gpu")
        try:
            members = future.result(timeout=70)
        finally:
            _label_node(cluster, node, None)
    now = {p.metadata.name: p for p in wait_group(cluster.api, namespace, "moving", 2, not_uids=first)}
    assert [m.pod for m in members] == ["moving-0", "moving-0-1"]
    assert all(now[m.pod].status.pod_ip == m.address for m in members)
    assert now["moving-0-1"].metadata.uid not in first
    assert members[1].address == cluster.node(node).ip
