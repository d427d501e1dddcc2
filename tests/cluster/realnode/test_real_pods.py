"""The project's image, run by real kubelets: helm install -> both pods Running and Ready through the
kubelet's own probes -> a request to the Service's ClusterIP (kube-proxy) answered by both ranks;
kubessh through the kubelet's exec streaming; faults, each ending with the group serving again
under LWS, no zombie in any container and nothing of the old pods left on the nodes.

The tests share one release and run in file order: each fault starts from a serving group.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from cluster.controlplane import Cluster
from cluster.realnode import NODE_LABEL, TAINT, RealNodes
from launcher.config import RestartPolicy
from launcher.errors import ExitCode
from tests.chart.chart_helpers import INSTALL_HINT, find_tool
from tests.cluster.lws import wait_for
from tests.cluster.realnode.pods import container_processes, lasting_zombies, leftovers
from tests.cluster.realnode.release import (
    BACKOFF,
    GRACE_S,
    LWS,
    RECOVERY_S,
    Served,
    answers,
    installed,
    ready_group,
    serving_again,
)
from tests.conftest import http_get
from tests.integration.launch import expected_output

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]


@pytest.fixture(scope="module")
def served(cluster: Cluster, real_nodes: RealNodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    binary = find_tool("helm", "HELM")
    if binary is None:
        pytest.skip(f"helm not found: {INSTALL_HINT}")
    with installed(cluster, real_nodes, binary, tmp_path_factory.mktemp("release")) as served:
        yield served


def assert_clean(s: Served, pods: list[client.V1Pod]) -> None:
    """No zombie in any container of the group, and nothing of another pod left on the nodes."""
    for pod in pods:
        assert lasting_zombies(s.pid1(pod)) == [], pod.metadata.name
    live = {p.metadata.uid for p in s.core.list_pod_for_all_namespaces().items}
    wait_for("no process of a gone pod on the nodes", lambda: not leftovers(s.nodes, live),
             lambda: leftovers(s.nodes, live), 30)


def test_install_serves_through_the_service(served: Served) -> None:
    s = served
    t0 = time.monotonic()
    leader, worker = wait_for("leader and worker Ready", lambda: ready_group(s), s.describe, 180)
    assert {leader.spec.node_name, worker.spec.node_name} == {n.name for n in s.nodes.nodes}  # one pod per node
    assert wait_for("an answer through the Service", lambda: answers(s), s.describe, 60) == (
        expected_output([1.0, 2.0, 3.0], 2), 2)
    print(f"helm install -> answer through the Service: {time.monotonic() - t0:.1f}s")
    assert_clean(s, [leader, worker])


def test_helm_test_sends_an_inference_through_the_service(served: Served) -> None:
    """The chart's test hook (launcher infer in the project's image) on a real node."""
    s = served
    wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    t0 = time.monotonic()
    out = s.helm.helm("test", "srv", "--logs", "--timeout", "120s")
    assert "Phase:          Succeeded" in out or "Phase: Succeeded" in out, out
    assert "toy_tp answered: OUTPUT FP32[1], RANKS INT32[1]" in out, out
    print(f"helm test: {time.monotonic() - t0:.1f}s")


def test_kubessh_started_the_worker_rank_through_exec_and_holds_no_stream(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    leader_procs = container_processes(s.pid1(leader))
    assert [p for p in leader_procs if p.name == "kubessh"] == []  # no exec stream held while serving
    worker_pid1 = s.pid1(worker)
    procs = {p.pid: p for p in container_processes(worker_pid1)}
    daemons = [p for p in procs.values() if p.name == "orted"]
    ranks = [p for p in procs.values() if p.name == "tritonserver"]
    assert len(daemons) == 1 and len(ranks) == 1, procs
    # started by an exec (the only way into the container besides its own command), then detached:
    # re-parented to the container's PID 1, no exec'd shell left between it and the container
    assert daemons[0].ppid == worker_pid1 and ranks[0].ppid == daemons[0].pid, procs
    assert sorted(p.name for p in procs.values() if p.ppid not in procs and p.pid != worker_pid1) == []


def test_rank_killed_in_the_worker_container(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    worker_pid1 = s.pid1(worker)
    rank = next(p for p in container_processes(worker_pid1) if p.name == "tritonserver")
    signal_process(rank.pid, signal.SIGKILL)
    # the worker's agent ends the rest of its ranks' processes; PID 1 reaps them
    assert lasting_zombies(worker_pid1) == []
    pods = serving_again(s, [leader, worker])
    ended = [e for e in s.exits.of(leader.metadata.uid) if e.exit_code == ExitCode.RANK_LOST]
    assert ended, s.exits.of(leader.metadata.uid)
    # the reason outlives the pod: the termination message, and an Event on the LeaderWorkerSet
    assert ended[0].message.startswith("exit 78 in serving: "), ended[0].message
    assert ended[0].message.strip() in s.failure_events()
    assert_clean(s, pods)


def test_leader_pod_deleted_drains_stops_every_rank_and_exits_0(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    host = s.service_ip()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # in flight through the Service at the delete
        in_flight = [pool.submit(slow_answer, host, float(i), 1.0) for i in range(4)]
        time.sleep(0.5)
        t0 = time.time()
        s.core.delete_namespaced_pod(leader.metadata.name, s.ns)
        assert [f.result(timeout=60) for f in in_flight] == [(expected_output([float(i)], 2), 2) for i in range(4)]
    ended = wait_for("the leader container's exit", lambda: s.exits.of(leader.metadata.uid), s.describe, GRACE_S + 10)
    assert [(e.container, e.exit_code) for e in ended] == [("leader", 0)], ended
    assert ended[0].finished - t0 < GRACE_S, f"took {ended[0].finished - t0:.1f}s of the {GRACE_S}s grace"
    print(f"leader pod deleted -> container exited 0 after {ended[0].finished - t0:.1f}s")
    assert_clean(s, serving_again(s, [leader, worker]))


def test_worker_liveness_failure_restarts_it_and_recreates_the_group(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    agent = next(p for p in container_processes(s.pid1(worker)) if p.name == "launcher" and p.pid != s.pid1(worker))
    signal_process(agent.pid, signal.SIGSTOP)  # its health server stops answering the liveness probe
    wait_for("the kubelet's liveness kill", lambda: any(
        e.reason == "Unhealthy" and "Liveness" in (e.message or "") for e in s.core.list_namespaced_event(
            s.ns, field_selector=f"involvedObject.name={worker.metadata.name}").items), s.describe, 90)
    assert_clean(s, serving_again(s, [leader, worker]))


def test_worker_main_process_killed(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    signal_process(s.pid1(worker), signal.SIGKILL)
    pods = serving_again(s, [leader, worker])
    assert 137 in [e.exit_code for e in s.exits.of(worker.metadata.uid)], s.exits.of(worker.metadata.uid)
    assert_clean(s, pods)


def test_a_recurring_failure_waits_its_backoff_before_the_group_is_recreated(served: Served) -> None:
    s = served
    leader, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    earlier = len(s.failure_events())
    assert earlier >= 1  # the faults above failed this group within the window
    policy = RestartPolicy(backoff_s=BACKOFF["backoffSeconds"], backoff_max_s=BACKOFF["backoffMaxSeconds"])
    delay = policy.delay(earlier)
    rank = next(p for p in container_processes(s.pid1(worker)) if p.name == "tritonserver")
    killed = time.time()
    signal_process(rank.pid, signal.SIGKILL)
    ended = wait_for("the leader's exit", lambda: s.exits.of(leader.metadata.uid), s.describe, 60)
    took = ended[0].finished - killed
    assert ended[0].exit_code == ExitCode.RANK_LOST and took >= delay - 1.0, (took, delay, ended)
    print(f"rank killed with {earlier} failures in the window -> leader exit after {took:.1f}s (backoff {delay:.0f}s)")
    assert len(s.failure_events()) == earlier + 1
    assert_clean(s, serving_again(s, [leader, worker]))


def test_a_permanent_error_parks_the_group_until_the_configuration_changes(served: Served) -> None:
    s = served
    old = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    s.upgrade("modelRepository.model=no_such_model")  # the leader's check: exit 65, no restart can fix it

    def parked() -> client.V1Pod | None:
        pods = [p for p in s.pods() if p.metadata.uid not in {o.metadata.uid for o in old}
                and p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
        leader = next((p for p in pods if p.metadata.name.endswith("-0")), None)
        if leader is None or not leader.status.pod_ip or len(pods) < 2:  # (the leader may park first)
            return None
        code, text = http_get(8080, "/readyz", host=leader.status.pod_ip)
        return leader if code == 503 and "exit 65 in config" in text else None
    leader = wait_for("the new leader parked", parked, s.describe, RECOVERY_S)
    uids = {p.metadata.uid for p in s.pods()}
    time.sleep(30)  # a recreate loop would have replaced the group several times by now
    pods = s.pods()
    assert {p.metadata.uid for p in pods} == uids, s.describe()
    assert all(c.restart_count == 0 for p in pods for c in p.status.container_statuses or []), s.describe()
    assert any("exit 65 in config" in m and "no_such_model" in m for m in s.failure_events())
    kubectl = find_tool("kubectl", "KUBECTL")
    if kubectl is not None:  # what an operator reads
        described = subprocess.run([str(kubectl), "--kubeconfig", str(s.cluster.kubeconfig), "-n", s.ns,
                                    "describe", "lws", LWS], capture_output=True, text=True, timeout=60).stdout
        assert "LaunchFailed" in described and "exit 65 in config" in described, described
    s.upgrade()  # the configuration fixed: the group rolls and serves again
    assert_clean(s, serving_again(s, [leader]))


def test_image_commands_run_in_the_container(served: Served) -> None:
    s = served
    leader, _ = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    for argv in (["launcher", "--help"], ["kubessh", "--help"], ["python3", "/opt/launcher/server.py", "--help"]):
        result = kubectl_exec(s, leader.metadata.name, argv)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (argv, result.stdout, result.stderr)


def test_every_process_runs_without_root_or_capabilities_on_read_only_files(served: Served) -> None:
    """The chart's defaults, as the kernel sees them: uid 1000, no effective capability, no new
    privileges, in both pods, for the launcher, Open MPI's daemon and every rank; the model repository
    and the root filesystem refuse writes."""
    s = served
    pods = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    names = set()
    for pod in pods:
        for proc in container_processes(s.pid1(pod)):
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if ":\t" in line)
            assert status["Uid"].split()[:2] == ["1000", "1000"], (proc, status["Uid"])
            assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1", (proc, status)
            names.add(proc.name)
    assert {"launcher", "tritonserver"} <= names and names & {"prted", "orted"}, names
    for target in ("/var/run/models/toy/written", "/opt/written"):
        result = kubectl_exec(s, pods[0].metadata.name, ["sh", "-c", f"echo x > {target}"])
        assert result.returncode != 0 and "Read-only file system" in result.stderr, (target, result.stderr)


def test_orphans_of_an_exec_are_reaped_by_the_containers_pid1(served: Served) -> None:
    """What kubessh's detached daemons become when they end: children of the container's PID 1."""
    s = served
    _, worker = wait_for("a serving group", lambda: ready_group(s), s.describe, 60)
    result = kubectl_exec(s, worker.metadata.name, ["sh", "-c", "(sleep 0.3 &); (sleep 0.3 &); (sleep 0.3 &)"])
    assert result.returncode == 0, result.stderr
    time.sleep(1)
    assert lasting_zombies(s.pid1(worker)) == []


def test_a_pod_that_cannot_start_is_described_by_its_kubelet_event(served: Served) -> None:
    s = served
    pod = {"metadata": {"name": "no-image"}, "spec": {
        "containers": [{"name": "main", "image": "localhost/not-built:here", "imagePullPolicy": "Never"}],
        "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
        "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}]}}
    s.core.create_namespaced_pod(s.ns, pod)
    try:
        with pytest.raises(AssertionError, match="ErrImageNeverPull"):  # what the failure names
            wait_for("no-image Running", lambda: s.core.read_namespaced_pod("no-image", s.ns).status.phase
                     == "Running", s.describe, 20)
    finally:
        s.core.delete_namespaced_pod("no-image", s.ns, grace_period_seconds=0)


def kubectl_exec(s: Served, pod: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``kubectl exec``: through the apiserver and the node's kubelet into the container."""
    kubectl = find_tool("kubectl", "KUBECTL")
    if kubectl is None:
        pytest.skip(f"kubectl not found: {INSTALL_HINT}")
    return subprocess.run([str(kubectl), "--kubeconfig", str(s.cluster.kubeconfig), "-n", s.ns, "exec", pod, "--",
                           *argv], capture_output=True, text=True, timeout=60)


def slow_answer(host: str, value: float, seconds: float) -> tuple[list[float], int]:
    """A toy request that keeps rank 0 busy ``seconds`` (its delay_s fault switch)."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{host}:8000", network_timeout=60)
    tensor = httpclient.InferInput("INPUT", [1], "FP32")
    tensor.set_data_from_numpy(np.asarray([value], dtype=np.float32))
    result = client.infer("toy_tp", [tensor], parameters={"delay_s": seconds})
    client.close()
    return result.as_numpy("OUTPUT").tolist(), int(result.as_numpy("RANKS")[0])


def signal_process(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
