"""The chart against the real control plane: `helm install` creates a group that LWS fills with
pods carrying the chart's labels and LWS's, `helm upgrade` adds a group, `helm uninstall` leaves
nothing, two releases in one namespace select only their own pods, and the API server confines
each release's exec to its own workers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.chart.chart_helpers import CHART
from tests.chart.chart_helpers import LWS_GROUP_KEY as GROUP_KEY
from tests.chart.chart_helpers import LWS_NAME as NAME
from tests.chart.chart_helpers import LWS_WORKER_INDEX as WORKER_INDEX
from tests.cluster.helm import INSTANCE, MODEL_REPO, VALUES, Release, describe, running
from tests.cluster.kubessh_helpers import run_in_pod
from tests.cluster.lws import wait_for
from tests.conftest import http_get
from tests.integration.launch import expected_output, infer, private_repo, wait_ready

pytestmark = pytest.mark.cluster

DEFAULT_CANARY_INPUTS = yaml.safe_load((CHART / "values.yaml").read_text())["canary"]["inputs"]
VENV_BIN = Path(sys.executable).parent
EXPECTED_LEADER_ARGS = [
    "leader", "--tp=2", "--pp=1", "--gpus-per-pod=1", f"--model-repo={MODEL_REPO}", "--model=tensorrt_llm",
    "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--health-port=8080",
    "--startup-timeout=120", "--discovery-timeout=60", "--drain-delay=5", "--drain-timeout=30",
    "--canary-model=ensemble", f"--canary-inputs={DEFAULT_CANARY_INPUTS}", "--canary-interval=30",
    "--canary-deadline=10", "--canary-misses=3", "--on-permanent-error=park", "--restart-window=600",
    "--restart-backoff=10", "--restart-backoff-max=300", "--log-format=text",
    "--restricted-apis=model-repository,shared-memory,trace,logging",
]
EXPECTED_WORKER_ARGS = ["worker", "--health-port=8080", "--log-format=text"]


def test_install_creates_a_group_with_the_charts_labels_env_and_args(cluster: Any, helm_in: Release) -> None:
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    helm_in.install("alpha", VALUES)
    lws = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets", "alpha-lws-triton")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2 and lws["spec"]["replicas"] == 1

    leader, worker = wait_for("leader and worker Running", lambda: running(core, ns, "alpha", 2),
                          lambda: describe(core, ns))
    assert (leader.metadata.name, worker.metadata.name) == ("alpha-lws-triton-0", "alpha-lws-triton-0-1")
    key = leader.metadata.labels[GROUP_KEY]
    for pod, role, index in ((leader, "leader", "0"), (worker, "worker", "1")):
        labels = pod.metadata.labels
        assert {k: labels.get(k) for k in ("app.kubernetes.io/name", INSTANCE, "app.kubernetes.io/component",
                                           NAME, WORKER_INDEX)} == {
            "app.kubernetes.io/name": "lws-triton", INSTANCE: "alpha", "app.kubernetes.io/component": role,
            NAME: "alpha-lws-triton", WORKER_INDEX: index}
        assert labels[GROUP_KEY] == key
        env = cluster.pod_env(ns, pod.metadata.name)
        assert env["LWS_GROUP_SIZE"] == "2" and env["LWS_WORKER_INDEX"] == index
        assert pod.spec.service_account_name == "alpha-lws-triton"
        assert pod.spec.containers[0].command == ["launcher"]
    assert leader.spec.containers[0].args == EXPECTED_LEADER_ARGS
    assert worker.spec.containers[0].args == EXPECTED_WORKER_ARGS
    leader_env = cluster.pod_env(ns, leader.metadata.name)
    assert (leader_env["LAUNCHER_GROUP_KEY"], leader_env["LAUNCHER_NAMESPACE"]) == (key, ns)
    assert_args_parse_as_the_group(leader.spec.containers[0].args[1:], leader_env, key, ns)


def assert_args_parse_as_the_group(argv: list[str], env: dict[str, str], key: str, ns: str) -> None:
    """The live leader's arguments and environment mean this group to the launcher's own CLI."""
    from launcher.cli import parse_leader_args

    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("LAUNCHER_", "LWS_"))]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith(("LAUNCHER_", "LWS_")):
                patch.setenv(name, value)
        config = parse_leader_args(argv)
    assert (config.tp, config.pp, config.gpus_per_pod, config.group_size) == (2, 1, 1, 2)
    assert (config.group_key, config.namespace, str(config.model_repo)) == (key, ns, MODEL_REPO)


def test_upgrade_to_two_replicas_creates_a_second_group(cluster: Any, helm_in: Release) -> None:
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    helm_in.install("alpha", VALUES)
    first = wait_for("the first group", lambda: running(core, ns, "alpha", 2), lambda: describe(core, ns))
    helm_in.upgrade("alpha", {**VALUES, "lws.replicas": "2"})
    pods = wait_for("two groups (4 pods)", lambda: running(core, ns, "alpha", 4), lambda: describe(core, ns))
    assert sorted(p.metadata.name for p in pods) == [
        "alpha-lws-triton-0", "alpha-lws-triton-0-1", "alpha-lws-triton-1", "alpha-lws-triton-1-1"]
    groups: dict[str, list[str]] = {}
    for pod in pods:
        groups.setdefault(pod.metadata.labels[GROUP_KEY], []).append(pod.metadata.labels[WORKER_INDEX])
    assert sorted(sorted(indices) for indices in groups.values()) == [["0", "1"], ["0", "1"]]
    assert {p.metadata.uid for p in first} <= {p.metadata.uid for p in pods}  # the first group kept running


def leftovers(api: client.ApiClient, ns: str, release: str) -> list[str]:
    """Everything of ``release`` still in ``ns``: its labelled objects, LWS's pods, StatefulSets and
    headless Service, and helm's release record."""
    selector = f"{INSTANCE}={release}"
    core, rbac, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    lws = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets")["items"]
    found = [f"LeaderWorkerSet/{o['metadata']['name']}" for o in lws]
    for kind, items in (("Pod", core.list_namespaced_pod(ns).items),
                        ("StatefulSet", apps.list_namespaced_stateful_set(ns).items),
                        ("Service", core.list_namespaced_service(ns).items),
                        ("ServiceAccount", core.list_namespaced_service_account(ns, label_selector=selector).items),
                        ("Role", rbac.list_namespaced_role(ns).items),
                        ("RoleBinding", rbac.list_namespaced_role_binding(ns).items),
                        ("Secret", core.list_namespaced_secret(ns, label_selector=f"owner=helm,name={release}").items)):
        found += [f"{kind}/{o.metadata.name}" for o in items]
    return found


def test_uninstall_leaves_nothing_of_the_release(cluster: Any, helm_in: Release) -> None:
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    helm_in.install("alpha", VALUES)
    wait_for("the group", lambda: running(core, ns, "alpha", 2), lambda: describe(core, ns))
    before = leftovers(cluster.api, ns, "alpha")
    for kind in ("LeaderWorkerSet", "Pod", "StatefulSet", "Service", "ServiceAccount", "Role", "RoleBinding",
                 "Secret"):
        assert any(item.startswith(f"{kind}/") for item in before), (kind, before)  # what must go was there

    helm_in.uninstall("alpha")
    wait_for("nothing of the release left", lambda: not leftovers(cluster.api, ns, "alpha") or None,
         lambda: leftovers(cluster.api, ns, "alpha"), timeout=60)
    assert helm_in.releases() == []


def test_two_releases_select_only_their_own_leader_pods(cluster: Any, helm_in: Release) -> None:
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    for release in ("alpha", "beta"):
        helm_in.install(release, VALUES)
    for release in ("alpha", "beta"):
        wait_for(f"{release}'s group", lambda r=release: running(core, ns, r, 2), lambda: describe(core, ns))

    for release in ("alpha", "beta"):
        service = core.read_namespaced_service(f"{release}-lws-triton-api", ns)
        selector = ",".join(f"{k}={v}" for k, v in sorted(service.spec.selector.items()))
        selected = [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=selector).items]
        assert selected == [f"{release}-lws-triton-0"], (release, selector, selected)


def test_the_charts_group_serves_with_the_charts_commands(cluster: Any, helm_in: Release, tmp_path: Path) -> None:
    """helm install -> LWS pods -> each pod's own command and environment from the chart, its
    ServiceAccount under the chart's Role -> discovery, kubessh, mpirun -> the toy model answers."""
    ns, core = helm_in.namespace, client.CoreV1Api(cluster.api)
    repo = private_repo(tmp_path)  # no kubelet mounts the claim here: the "mount" is this directory
    helm_in.install("srv", {**VALUES, "modelRepository.mountPath": str(tmp_path), "modelRepository.path": str(repo),
                            "modelRepository.model": "toy_tp"})
    leader, worker = wait_for("leader and worker Running", lambda: running(core, ns, "srv", 2),
                              lambda: describe(core, ns))
    processes = {}
    for pod in (leader, worker):  # kwok runs no containers: start each pod's process as its kubelet would
        container = pod.spec.containers[0]
        argv = [str(VENV_BIN / container.command[0]), *container.args]
        log = tmp_path / f"{pod.metadata.name}.log"
        with log.open("w") as out:
            processes[pod.metadata.name] = (cluster.popen_in_pod(
                ns, pod.metadata.name, argv, stdout=out, stderr=subprocess.STDOUT, text=True, cwd="/"), log)
    (leader_proc, leader_log), (worker_proc, worker_log) = processes.values()
    try:
        try:
            wait_ready(8000, None, timeout_s=120, host=leader.status.pod_ip)
        except AssertionError:
            raise AssertionError(f"not serving; leader log:\n{leader_log.read_text()}") from None
        assert infer(8000, [1.0, 2.0], host=leader.status.pod_ip) == (expected_output([1.0, 2.0], 2), 2)
        # the worker's own agent (the chart's worker command) saw the rank that mpirun started in its pod
        assert http_get(8080, "/healthz", host=worker.status.pod_ip) == (200, "ranked\n"), worker_log.read_text()
    finally:
        for proc, _ in processes.values():
            proc.terminate()
        codes = [proc.wait(timeout=30) for proc, _ in processes.values()]
    assert codes[0] == 0, leader_log.read_text()
    assert "discovery: 2/2 pods running" in leader_log.read_text()


def kubessh_from_leader(cluster: Any, ns: str, release: str, pod: str) -> tuple[int, str]:
    """``kubessh --any-pod <pod> true`` from ``release``'s leader pod, under its ServiceAccount token:
    with the client-side group check off, what the API server alone allows. (exit status, its one
    error line)"""
    argv = [str(VENV_BIN / "kubessh"), "--any-pod", pod, "true"]
    code, _, err = run_in_pod(cluster, ns, f"{release}-lws-triton-0", argv, env={"LAUNCHER_GROUP_KEY": ""})
    return code, err.strip().splitlines()[-1] if err.strip() else ""


def refused(result: tuple[int, str]) -> tuple[int, str] | None:
    return result if result[0] != 0 else None


def test_the_api_server_keeps_each_releases_exec_to_its_own_workers(cluster: Any, helm_in: Release) -> None:
    """Releases "a" and "a-b" (whose names share a prefix), each account granted exec into every pod
    of the namespace on top of the chart's Role: the chart's ValidatingAdmissionPolicy still refuses
    each leader an exec into the other's worker and allows its own; without the policy the grant
    reaches the other release."""
    ns, core, rbac = helm_in.namespace, client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
    for release in ("a", "a-b"):
        helm_in.install(release, VALUES)
    for release in ("a", "a-b"):
        wait_for(f"{release}'s group", lambda r=release: running(core, ns, r, 2), lambda: describe(core, ns))
    rbac.create_namespaced_role(ns, {"metadata": {"name": "too-broad"}, "rules": [
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "too-broad"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "too-broad"},
        "subjects": [{"kind": "ServiceAccount", "name": f"{r}-lws-triton", "namespace": ns} for r in ("a", "a-b")]})
    try:
        for release, other in (("a", "a-b"), ("a-b", "a")):
            assert kubessh_from_leader(cluster, ns, release, f"{release}-lws-triton-0-1") == (0, "")
            target = f"{other}-lws-triton-0-1"
            code, line = wait_for(f"{release}'s exec into {target} refused (the policy takes effect)",
                                  lambda r=release, t=target: refused(kubessh_from_leader(cluster, ns, r, t)),
                                  lambda: describe(core, ns), timeout=30)
            assert code == 252, line
            assert (f"system:serviceaccount:{ns}:{release}-lws-triton may exec only into the worker pods of "
                    f"LeaderWorkerSet {ns}/{release}-lws-triton, not exec into {ns}/{other}-lws-triton-0-1") in line
        helm_in.upgrade("a", {**VALUES, "serviceAccount.execAdmissionPolicy": "false"})
        wait_for("a's exec into a-b once a's policy is gone",
                 lambda: kubessh_from_leader(cluster, ns, "a", "a-b-lws-triton-0-1")[0] == 0 or None,
                 lambda: kubessh_from_leader(cluster, ns, "a", "a-b-lws-triton-0-1"))
    finally:
        for release in ("a", "a-b"):  # the policies are cluster-scoped: the namespace's deletion leaves them
            helm_in.uninstall(release)
