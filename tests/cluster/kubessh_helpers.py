"""Helpers for the kubessh and end-to-end cluster tests: LWS groups with a ServiceAccount and a minimal Role,
and what tells whether an MPI daemon depends on its exec stream."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client

GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
NAME = "leaderworkerset.sigs.k8s.io/name"
MINIMAL_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
]


def lws(name: str, size: int, service_account: str) -> dict[str, Any]:
    container = {"name": "main", "image": "example.invalid/launcher:test", "command": ["sleep", "infinity"]}
    pod = {"serviceAccountName": service_account, "containers": [container]}
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": size, "workerTemplate": {"spec": pod}}}}


def create_service_account(api: client.ApiClient, ns: str, name: str, rules: list[dict[str, Any]]) -> None:
    client.CoreV1Api(api).create_namespaced_service_account(ns, {"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})


def set_rules(api: client.ApiClient, ns: str, name: str, rules: list[dict[str, Any]]) -> None:
    client.RbacAuthorizationV1Api(api).patch_namespaced_role(name, ns, {"rules": rules})


def running_group(api: client.ApiClient, ns: str, name: str, size: int, timeout: float = 90) -> list[client.V1Pod]:
    """The group's pods, by worker index, once all are Running with an IP."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = [p for p in core.list_namespaced_pod(ns, label_selector=f"{NAME}={name}").items
                if p.metadata.deletion_timestamp is None]
        if len(pods) == size and all(p.status.phase == "Running" and p.status.pod_ip for p in pods):
            return sorted(pods, key=lambda p: int(p.metadata.labels[WORKER_INDEX]))
        time.sleep(0.1)
    raise AssertionError(f"group {name} not Running after {timeout}s")


def run_in_pod(cluster: Any, ns: str, pod: str, argv: list[str], env: dict[str, str] | None = None,
               stdin: str | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """``argv`` as the pod's own process (its ServiceAccount token mounted): (status, stdout, stderr)."""
    proc = cluster.popen_in_pod(ns, pod, argv, env=env,
                                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def kubessh_under(pid: int) -> list[psutil.Process]:
    """The kubessh processes among the descendants of ``pid``."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if any(Path(word).name == "kubessh" for word in proc.cmdline()[:2]):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def stdio(proc: psutil.Process) -> list[str]:
    return [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (0, 1, 2)]


def detached_from_the_stream(daemon: psutil.Process) -> bool:
    """Neither a descendant of the exec server (kwok here, the container runtime in a real cluster)
    nor holding the stream's pipes: ending the stream cannot touch it."""
    files = stdio(daemon)
    quiet = all(p == "/dev/null" or (p.startswith("/tmp/kubessh-") and p.endswith(".log")) for p in files)
    return quiet and all(a.name() != "kwok" for a in daemon.parents())
