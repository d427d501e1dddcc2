"""``launcher leader`` as the leader pod's process on the real control plane, end to end.

LWS creates the pods -> the launcher discovers them through the API with the pod's own token under the
chart's Role -> probes the worker through the agent -> mpirun starts one toy-model rank per pod -> a
request to rank 0 at the leader's pod IP needs both ranks. Two agents carry mpirun's remote starts:
``kubessh`` (exec through the API, the product) and, in the parametrised tests, ``pod-rsh`` (nsenter
into the pod's sandbox, the agent of tests/integration), which tells a Kubernetes failure from a
kubessh one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client

from launcher.errors import ExitCode
from launcher.plan import LAUNCH_ID_ENV
from tests.cluster.kubessh_helpers import detached_from_the_stream, kubessh_under, stdio
from tests.cluster.lws import apply_lws, grant_launcher_role, group_key, lws, pods_of, wait_for, wait_group
from tests.conftest import REPO, VENV_BIN
from tests.integration.launch import expected_output, infer, private_repo, wait_ready

pytestmark = pytest.mark.cluster

DEBIAN_MPIRUN = "/usr/bin/mpirun"
DEBIAN_LIBMPI = "/usr/lib/x86_64-linux-gnu/libmpi.so.40"
POD_RSH = REPO / "tests" / "agents" / "pod-rsh"
KUBESSH = ["--rsh-agent=kubessh"]
GROUP_CHANGED_TARGET_S = 3.0


def pod_rsh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Flags for pod-rsh, with a PODNET_DIR where each pod's sandbox process is written (write_pod_pids)."""
    podnet = tmp_path / "podnet"
    podnet.mkdir()
    monkeypatch.setenv("PODNET_DIR", str(podnet))
    return [f"--rsh-agent={POD_RSH}"]


@pytest.fixture(params=["pod-rsh", "kubessh"])
def agent(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if request.param == "kubessh":
        return KUBESSH
    return pod_rsh(tmp_path, monkeypatch)


@pytest.fixture(params=["ompi5", "ompi4"])
def mpi(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "ompi5":
        return []
    if not Path(DEBIAN_MPIRUN).exists():
        pytest.skip("Debian's Open MPI 4.1 is not installed")
    return [f"--mpirun={DEBIAN_MPIRUN}", f"--env=MPI4PY_LIBMPI={DEBIAN_LIBMPI}"]


class Launch:
    def __init__(self, cluster: Any, ns: str, name: str, pods: list[client.V1Pod], proc: subprocess.Popen[str],
                 log: Path) -> None:
        self.cluster, self.ns, self.name, self.pods, self.proc, self.log = cluster, ns, name, pods, proc, log

    @property
    def leader_ip(self) -> str:
        return str(self.pods[0].status.pod_ip)

    def output(self) -> str:
        return self.log.read_text()


def write_pod_pids(cluster: Any, ns: str, pods: list[client.V1Pod]) -> None:
    """pod-rsh finds each pod's sandbox by name, through $PODNET_DIR/<pod>.pid."""
    podnet = os.environ.get("PODNET_DIR")
    if podnet:
        for pod in pods:
            (Path(podnet) / f"{pod.metadata.name}.pid").write_text(str(cluster.sandbox_of(ns, pod.metadata.name).pid))


def start(cluster: Any, ns: str, tmp_path: Path, agent: list[str], mpi: list[str], name: str = "e2e",
          manifest: dict[str, Any] | None = None, discovery_timeout_s: int = 60,
          restart_policy: str | None = None, exec_too: bool = True, tutorial_flags: bool = False) -> Launch:
    """A group of 2 under the launcher's Role, and ``launcher leader`` as its leader pod's process."""
    grant_launcher_role(cluster.api, ns, exec_too=exec_too)
    apply_lws(cluster.api, ns, manifest or lws(name, 2, restart_policy=restart_policy))
    if manifest is None:
        pods = wait_group(cluster.api, ns, name, 2)
    else:  # the worker may wait: start on the leader alone
        deadline = time.monotonic() + 60
        while not (pods := [p for p in pods_of(cluster.api, ns, name) if p.status.phase == "Running"]):
            assert time.monotonic() < deadline, "the leader pod never ran"
            time.sleep(0.1)
    extra_args = [f"--discovery-timeout={discovery_timeout_s}", *agent, *mpi]
    extra_env = {}
    if tutorial_flags:  # the group key and namespace as the tutorial passes them: flags, not the pod's env
        extra_args += [f"--stateful_set_group_key={group_key(pods[0])}", f"--namespace={ns}"]
        extra_env = {"LAUNCHER_GROUP_KEY": "", "LAUNCHER_NAMESPACE": ""}
    return launch_in(cluster, ns, name, pods, tmp_path, extra_args, extra_env)


def launch_in(cluster: Any, ns: str, name: str, pods: list[client.V1Pod], tmp_path: Path, extra_args: list[str],
              extra_env: dict[str, str] | None = None) -> Launch:
    """``launcher leader`` as the process of ``pods[0]``, the group's leader (as its kubelet would start it)."""
    write_pod_pids(cluster, ns, pods)
    podnet = os.environ.get("PODNET_DIR")
    repo = tmp_path / "model_repository"
    if not repo.exists():
        private_repo(tmp_path)
    argv = [str(VENV_BIN / "launcher"), "leader", "--tp=2", "--gpus-per-pod=1", f"--model-repo={repo}",
            "--model=toy_tp", "--stop-grace-period=5", *extra_args]
    log = tmp_path / f"leader-{pods[0].metadata.uid}.log"
    env = {**({"PODNET_DIR": podnet} if podnet else {}), **(extra_env or {})}
    with log.open("w") as out:
        proc = cluster.popen_in_pod(ns, pods[0].metadata.name, argv, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True, cwd="/")
    return Launch(cluster, ns, name, pods, proc, log)


def stop(launch: Launch) -> int:
    if launch.proc.poll() is None:
        launch.proc.terminate()
    try:
        return launch.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        launch.proc.kill()
        return launch.proc.wait()


def serve_and_answer(launch: Launch) -> None:
    try:
        wait_ready(8000, None, timeout_s=120, host=launch.leader_ip)
    except AssertionError:
        raise AssertionError(f"not serving; leader log:\n{launch.output()}") from None
    assert infer(8000, [1.0, 2.0, 3.0], host=launch.leader_ip) == (expected_output([1.0, 2.0, 3.0], 2), 2)


def ranks_in(cluster: Any, ns: str, pod: str) -> list[psutil.Process]:
    found = []
    for proc in cluster.sandbox_of(ns, pod).processes():
        try:
            if proc.name() == "tritonserver" and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def test_leader_discovers_launches_through_the_agent_and_serves(cluster: Any, namespace: str, tmp_path: Path,
                                                                agent: list[str], mpi: list[str]) -> None:
    launch = start(cluster, namespace, tmp_path, agent, mpi)
    try:
        serve_and_answer(launch)
        worker = launch.pods[1].metadata.name
        ranks = ranks_in(cluster, namespace, worker)
        assert ranks, "no rank in the worker pod"
        # The worker agent and the stop sweep find ranks by the launch id: the agent's shell did not
        # inherit it from mpirun, so it must have come through -x.
        assert LAUNCH_ID_ENV in ranks[0].environ(), ranks[0].environ()
        # mpirun got pod names it cannot resolve (no cluster DNS; a pod knows only its own name): it
        # needs none, since each daemon dials back to the leader's address.
        leader_sandbox = cluster.sandbox_of(namespace, launch.pods[0].metadata.name)
        assert subprocess.run(leader_sandbox.command(["getent", "hosts", worker])).returncode != 0
    finally:
        code = stop(launch)
    log = launch.output()
    assert "discovery: 2/2 pods running: e2e-0=" in log and "mpirun started" in log, log
    assert code == 0, log


def test_worker_pod_deleted_ends_the_leader_with_group_changed(cluster: Any, namespace: str, tmp_path: Path,
                                                               agent: list[str]) -> None:
    launch = start(cluster, namespace, tmp_path, agent, [])
    try:
        serve_and_answer(launch)
        worker = launch.pods[1].metadata.name
        begun = time.monotonic()
        client.CoreV1Api(cluster.api).delete_namespaced_pod(worker, namespace)
        code = launch.proc.wait(timeout=30)
        took = time.monotonic() - begun
    finally:
        stop(launch)
    log = launch.output()
    assert code == ExitCode.GROUP_CHANGED, log
    # which of these the watch shows first depends on how fast the deletion and LWS's replacement land
    assert any(f"pod {worker} (worker 1) {what}" in log
               for what in ("is terminating", "was deleted", "was replaced")), log
    assert took <= GROUP_CHANGED_TARGET_S, f"leader exited {took:.2f}s after the delete\n{log}"
    # LWS recreates the whole group (the leader pod too), whose new leader process serves again
    old = {p.metadata.uid for p in launch.pods}
    pods = wait_group(cluster.api, namespace, launch.name, 2, timeout=60, not_uids=old)
    again = launch_in(cluster, namespace, launch.name, pods, tmp_path, agent)
    try:
        serve_and_answer(again)
    finally:
        assert stop(again) == 0, again.output()


@pytest.mark.parametrize("mpi_flavour", ["ompi5", "ompi4"])
def test_serving_holds_no_exec_stream(cluster: Any, namespace: str, tmp_path: Path, mpi_flavour: str) -> None:
    """A kubelet closes idle exec streams after hours: once serving, no rank may depend on one."""
    mpi = [] if mpi_flavour == "ompi5" else [f"--mpirun={DEBIAN_MPIRUN}", f"--env=MPI4PY_LIBMPI={DEBIAN_LIBMPI}"]
    launch = start(cluster, namespace, tmp_path, KUBESSH, mpi)
    try:
        serve_and_answer(launch)
        # kubessh returns once the worker's daemon runs detached: nothing is left to close
        assert kubessh_under(launch.proc.pid) == []
        worker = launch.pods[1].metadata.name
        daemon = ranks_in(cluster, namespace, worker)[0].parent()
        assert daemon.name() in ("orted", "prted"), daemon.name()
        assert detached_from_the_stream(daemon), ([a.name() for a in daemon.parents()], stdio(daemon))
        assert infer(8000, [4.0, 5.0], host=launch.leader_ip) == (expected_output([4.0, 5.0], 2), 2)
    finally:
        code = stop(launch)
    assert code == 0, launch.output()


def restart_container(core: client.CoreV1Api, ns: str, pod: str) -> None:
    """What a kubelet reports after a container restart that keeps its pod: restartCount + 1."""
    live = core.read_namespaced_pod_status(pod, ns)
    for status in live.status.container_statuses:
        status.restart_count = (status.restart_count or 0) + 1
    core.replace_namespaced_pod_status(pod, ns, live)


def turn_not_ready(core: client.CoreV1Api, ns: str, pod: str) -> None:
    """What a kubelet reports when a readiness probe starts failing."""
    live = core.read_namespaced_pod_status(pod, ns)
    for status in live.status.container_statuses:
        status.ready = False
    for condition in live.status.conditions:
        if condition.type in ("Ready", "ContainersReady"):
            condition.status = "False"
    core.replace_namespaced_pod_status(pod, ns, live)


def kill_rank(cluster: Any, ns: str, pod: str) -> None:
    ranks = ranks_in(cluster, ns, pod)
    assert ranks, f"no rank in pod {pod}"
    ranks[0].kill()


@pytest.mark.parametrize("fault,exit_code,says,within_s", [
    # mpirun learns of the death from the worker's daemon, then ends rank 0 (Triton's shutdown)
    ("rank killed", ExitCode.RANK_LOST, "a rank ended", 10.0),
    ("container restarted", ExitCode.GROUP_CHANGED, "(worker 1) restarted (restarts 0 -> 1)", GROUP_CHANGED_TARGET_S),
    ("not ready", ExitCode.GROUP_CHANGED, "(worker 1) turned not ready", GROUP_CHANGED_TARGET_S),
])
def test_a_fault_in_the_worker_pod_ends_the_leader(cluster: Any, namespace: str, tmp_path: Path, fault: str,
                                                   exit_code: ExitCode, says: str, within_s: float) -> None:
    # LWS's default policy would itself recreate the group on a container restart, racing the
    # launcher's own watch: "None" leaves the launcher's reaction as the one under test.
    launch = start(cluster, namespace, tmp_path, KUBESSH, [], restart_policy="None")
    core = client.CoreV1Api(cluster.api)
    try:
        serve_and_answer(launch)
        worker = launch.pods[1].metadata.name
        begun = time.monotonic()
        if fault == "rank killed":
            kill_rank(cluster, namespace, worker)
        elif fault == "container restarted":
            restart_container(core, namespace, worker)
        else:
            turn_not_ready(core, namespace, worker)
        code = launch.proc.wait(timeout=30)
        took = time.monotonic() - begun
    finally:
        stop(launch)
    log = launch.output()
    assert code == exit_code, log
    assert says in log, log[-3000:]
    print(f"\n{fault}: leader exit {code} after {took:.2f}s")
    assert took <= within_s, f"leader exited {took:.2f}s after the fault\n{log}"
    wait_for("the worker's rank to end", lambda: not ranks_in(cluster, namespace, worker),
             lambda: ranks_in(cluster, namespace, worker), timeout=10)


def test_apiserver_restart_during_discovery_and_the_group_still_comes_up(
        cluster: Any, namespace: str, tmp_path: Path) -> None:
    node = cluster.nodes[-1].name  # the worker's; the leader is kept off it (one pod per node)
    manifest = lws("late", 2, worker={"nodeSelector": {"launcher-e2e": "yes"}},
                   leader={"nodeName": cluster.nodes[0].name})
    # generous: the scheduler and kwok re-watch after the restart with client-go's backoff
    launch = start(cluster, namespace, tmp_path, KUBESSH, [], name="late", manifest=manifest, discovery_timeout_s=240)
    core = client.CoreV1Api(cluster.api)
    try:
        time.sleep(2.0)  # the launcher is watching its group, one pod short
        cluster.restart("kube-apiserver", down_s=1)
        core.patch_node(node, {"metadata": {"labels": {"launcher-e2e": "yes"}}})
        launch.pods = wait_group(cluster.api, namespace, "late", 2, timeout=240)
        serve_and_answer(launch)
    finally:
        core.patch_node(node, {"metadata": {"labels": {"launcher-e2e": None}}})
        code = stop(launch)
    log = launch.output()
    assert "discovery: 1/2 pods running (worker 1: Pending (Unschedulable: " in log, log
    assert "pod watch interrupted" in log, log
    assert code == 0, log


def test_group_key_given_as_a_flag_reaches_the_agent(cluster: Any, namespace: str, tmp_path: Path) -> None:
    """kubessh learns the group it may enter from its environment: the launcher must put a key given
    only on its command line there, for the readiness probe and for mpirun alike."""
    launch = start(cluster, namespace, tmp_path, KUBESSH, [], tutorial_flags=True)
    try:
        serve_and_answer(launch)
    finally:
        code = stop(launch)
    assert code == 0, launch.output()


def test_a_role_without_exec_names_the_worker_verb_and_resource(cluster: Any, namespace: str,
                                                                 tmp_path: Path) -> None:
    launch = start(cluster, namespace, tmp_path, KUBESSH, [], exec_too=False)
    begun = time.monotonic()
    code = launch.proc.wait(timeout=60)
    took = time.monotonic() - begun
    last = launch.output().strip().splitlines()[-1]
    assert code == ExitCode.FORBIDDEN, launch.output()
    # a websocket exec is authorised as "get" on pods/exec first (the chart's Role grants get and create)
    worker = launch.pods[1].metadata.name
    assert last.startswith(f"launcher: error: readiness: kubessh cannot enter {worker}: forbidden: cannot get "
                           f"pods/exec in namespace {namespace}"), last
    assert took < 30, f"a missing permission waited out the discovery timeout ({took:.1f}s)"


def test_leader_without_group_key_says_so_in_one_line(cluster: Any, namespace: str, tmp_path: Path) -> None:
    apply_lws(cluster.api, namespace, lws("nokey", 1))
    pod = wait_group(cluster.api, namespace, "nokey", 1)[0].metadata.name
    proc = cluster.popen_in_pod(
        namespace, pod, [str(VENV_BIN / "launcher"), "leader", f"--model-repo={private_repo(tmp_path)}",
                         "--model=toy_tp"], env={"LAUNCHER_GROUP_KEY": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.CONFIG_INVALID, err
    assert "error: --group-key is not set: Kubernetes discovery needs" in err.strip().splitlines()[-1], err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
