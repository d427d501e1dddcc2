"""kubessh against the real control plane: exec, exit status, refusal, probe, RBAC, Open MPI 4.1 and 5.

Unless a test says otherwise kubessh runs as the leader pod's own process, with
its ServiceAccount ("launcher") bound to exactly the minimal Role."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client

from tests.cluster.kubessh_helpers import (
    GROUP_KEY,
    MINIMAL_RULES,
    create_service_account,
    detached_from_the_stream,
    kubessh_under,
    lws,
    run_in_pod,
    running_group,
    set_rules,
    stdio,
)

pytestmark = pytest.mark.cluster

VENV_BIN = Path(sys.executable).parent
SA = "launcher"


@dataclass
class Groups:
    ns: str
    leader: str  # ka-0
    worker: str  # ka-0-1
    key: str
    other: str  # kb-0, of another group
    env: dict[str, str]  # what the leader exports to mpirun and hence to kubessh


@pytest.fixture(scope="module")
def groups(cluster: Any) -> Iterator[Groups]:
    ns = cluster.create_namespace("kubessh")
    try:
        create_service_account(cluster.api, ns, SA, MINIMAL_RULES)
        custom = client.CustomObjectsApi(cluster.api)
        for name, size in (("ka", 2), ("kb", 1)):
            custom.create_namespaced_custom_object("leaderworkerset.x-k8s.io", "v1", ns, "leaderworkersets",
                                                   lws(name, size, SA))
        leader, worker = running_group(cluster.api, ns, "ka", 2)
        (other,) = running_group(cluster.api, ns, "kb", 1)
        key = leader.metadata.labels[GROUP_KEY]
        assert other.metadata.labels[GROUP_KEY] != key
        yield Groups(ns, leader.metadata.name, worker.metadata.name, key, other.metadata.name,
                     {"LAUNCHER_GROUP_KEY": key, "LAUNCHER_NAMESPACE": ns})
    finally:
        cluster.delete_namespace(ns)


def kubessh(cluster: Any, g: Groups, *args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> tuple[int, str, str]:
    return run_in_pod(cluster, g.ns, g.leader, ["kubessh", *args], env=g.env if env is None else env, stdin=stdin)


def test_words_with_spaces_and_quotes_arrive_intact(cluster: Any, groups: Groups) -> None:
    # mpirun pre-quotes for a remote shell: the words are joined and run through sh -c
    words = ["printf", "'<%s>'", "'a  b'", "\"c'd\"", "'$HOME'", "\"x\\\"y\""]
    assert kubessh(cluster, groups, groups.worker, *words) == (0, "<a  b><c'd><$HOME><x\"y>", "")


def test_stdio_is_streamed_and_separated(cluster: Any, groups: Groups) -> None:
    # head, not cat: kwok's exec never closes the command's stdin (kubectl exec -i hangs on cat there too)
    rc, out, err = kubessh(cluster, groups, groups.worker, "head -n 1; hostname; echo oops >&2", stdin="from stdin\n")
    assert (rc, out, err) == (0, f"from stdin\n{groups.worker}\n", "oops\n")


def test_large_output_arrives_whole(cluster: Any, groups: Groups) -> None:
    rc, out, err = kubessh(cluster, groups, groups.worker, "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end")
    assert (rc, err, out) == (0, "", "x" * 3000000 + "\nend\n")


@pytest.mark.parametrize("status", [0, 7])
def test_remote_exit_status_is_returned(cluster: Any, groups: Groups, status: int) -> None:
    assert kubessh(cluster, groups, groups.worker, f"echo ran; exit {status}") == (status, "ran\n", "")


def test_ssh_options_before_the_pod_are_ignored(cluster: Any, groups: Groups) -> None:
    assert kubessh(cluster, groups, "-x", "-o", "StrictHostKeyChecking=no", f"root@{groups.worker}",
                   "hostname") == (0, f"{groups.worker}\n", "")


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubessh: "), err
    return lines[0]


def test_unknown_pod_is_one_line_and_non_zero(cluster: Any, groups: Groups) -> None:
    rc, out, err = kubessh(cluster, groups, "ka-0-9", "true")
    assert (rc, out) == (254, "")
    assert f"pod ka-0-9 not found in namespace {groups.ns}" in one_line(err)


def test_pod_of_another_group_is_refused(cluster: Any, groups: Groups) -> None:
    rc, out, err = kubessh(cluster, groups, groups.other, "touch /tmp/kubessh-must-not-run")
    assert (rc, out) == (253, "")
    assert f"refusing pod {groups.other}" in one_line(err) and groups.key in err
    assert not cluster.sandbox_of(groups.ns, groups.other).path("/tmp/kubessh-must-not-run").exists()


def test_without_a_group_key_only_any_pod_may_exec(cluster: Any, groups: Groups) -> None:
    env = {"LAUNCHER_NAMESPACE": groups.ns}
    rc, _, err = kubessh(cluster, groups, groups.other, "true", env=env)
    assert rc == 253 and "no group key" in one_line(err)
    assert kubessh(cluster, groups, "--any-pod", groups.other, "hostname", env=env) == (0, f"{groups.other}\n", "")


def test_namespace_comes_from_the_service_account(cluster: Any, groups: Groups) -> None:
    env = {"LAUNCHER_GROUP_KEY": groups.key}
    assert kubessh(cluster, groups, groups.worker, "hostname", env=env) == (0, f"{groups.worker}\n", "")


def test_probe(cluster: Any, groups: Groups) -> None:
    assert kubessh(cluster, groups, "--probe", groups.worker) == (0, "", "")
    rc, _, err = kubessh(cluster, groups, "--probe", "ka-0-9")
    assert rc == 254 and one_line(err)
    rc, _, err = kubessh(cluster, groups, "--probe", groups.other)
    assert rc == 253 and one_line(err)


def test_kubeconfig_outside_a_pod(cluster: Any, groups: Groups) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LAUNCHER_GROUP_KEY": groups.key}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run([str(VENV_BIN / "kubessh"), "--namespace", groups.ns, groups.worker, "exit 5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (5, "")


def test_unknown_container_is_one_line(cluster: Any, groups: Groups) -> None:
    rc, out, err = kubessh(cluster, groups, "--container", "nope", groups.worker, "true")
    assert rc == 255 and out == "" and "nope" in one_line(err)


def test_api_server_down_at_start_is_retried(cluster: Any, groups: Groups) -> None:
    # As the cluster admin: an API server that has just started denies service accounts until its
    # RBAC caches fill (kubessh gives a denial kubessh.denial.BEFORE_ACCEPTED_S), which is not what this tests.
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LAUNCHER_GROUP_KEY": groups.key}
    result: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        time.sleep(0.5)  # inside the 3 s without an API server
        result.append(subprocess.run([str(VENV_BIN / "kubessh"), "--namespace", groups.ns, groups.worker, "hostname"],
                                     env=env, capture_output=True, text=True, timeout=60))
    thread = threading.Thread(target=run)
    thread.start()
    # in this thread: what restart starts dies with the thread that started it (PR_SET_PDEATHSIG)
    cluster.restart("kube-apiserver", down_s=3)
    thread.join(70)
    assert [(r.returncode, r.stdout, r.stderr) for r in result] == [(0, f"{groups.worker}\n", "")]


def wait_for_forbidden(cluster: Any, g: Groups, needle: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        rc, out, err = kubessh(cluster, g, g.worker, "true")
        if rc == 252 or time.monotonic() > deadline:
            assert (rc, out) == (252, ""), err
            line = one_line(err)
            assert needle in line, line
            return line


@pytest.mark.parametrize(("rules", "needle"), [
    # a websocket exec is a GET upgraded: the API checks get, then create, on pods/exec
    ([MINIMAL_RULES[0]], "forbidden: cannot get pods/exec in namespace"),
    ([MINIMAL_RULES[0], {**MINIMAL_RULES[1], "verbs": ["get"]}], "forbidden: cannot create pods/exec in namespace"),
    ([MINIMAL_RULES[1]], "forbidden: cannot get pods in namespace"),
], ids=["no-pods-exec", "no-pods-exec-create", "no-pods-get"])
def test_a_missing_permission_names_verb_and_resource(cluster: Any, groups: Groups, rules: list[dict[str, Any]],
                                                      needle: str) -> None:
    assert kubessh(cluster, groups, "--probe", groups.worker)[0] == 0  # the minimal Role is enough
    set_rules(cluster.api, groups.ns, SA, rules)
    try:
        line = wait_for_forbidden(cluster, groups, needle)
        assert f"system:serviceaccount:{groups.ns}:{SA}" in line and "Role" in line
    finally:
        set_rules(cluster.api, groups.ns, SA, MINIMAL_RULES)
    deadline = time.monotonic() + 15
    while kubessh(cluster, groups, "--probe", groups.worker)[0] != 0:
        assert time.monotonic() < deadline, "the minimal Role did not work again"


def test_daemon_launch_returns_once_the_daemon_runs_detached(cluster: Any, groups: Groups) -> None:
    t0 = time.monotonic()
    assert kubessh(cluster, groups, groups.worker, "sleep", "4242", "#", "prted") == (0, "", "")
    assert time.monotonic() - t0 < 10
    rc, out, _ = kubessh(cluster, groups, groups.worker, "pgrep -f 'sleep 4242'")
    assert rc == 0 and out.strip()
    kubessh(cluster, groups, groups.worker, "pkill -f 'sleep 4242'")


def test_daemon_that_exits_at_once_is_a_failure_with_its_log(cluster: Any, groups: Groups) -> None:
    rc, out, err = kubessh(cluster, groups, groups.worker, "echo cannot start; exit 9 #", "orted")
    assert (rc, out) == (9, "")
    assert "exited with status 9" in err and "cannot start" in err


# --- Open MPI through kubessh -------------------------------------------------------------------------

RANK = ("import socket, sys, time; from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print('started', c.rank, socket.gethostname(), flush=True); time.sleep(float(sys.argv[1])); "
        "print('sum', c.rank, c.allreduce(c.rank + 1), flush=True)")  # argv: sleep seconds, a job token


def mpirun_argv(flavour: str, hosts: str, sleep_s: float, token: str = "-") -> list[str]:
    if flavour == "ompi5":
        head = [str(VENV_BIN / "mpirun"), "--prtemca", "plm_ssh_agent", "kubessh",
                "--prtemca", "plm_ssh_no_tree_spawn", "1"]
    else:
        head = ["/usr/bin/mpirun", "--mca", "plm_rsh_agent", "kubessh", "--mca", "plm_rsh_no_tree_spawn", "1",
                "--noprefix", "-x", "MPI4PY_LIBMPI=/usr/lib/x86_64-linux-gnu/libmpi.so.40"]
    return [*head, "--allow-run-as-root", "--bind-to", "none", "--host", hosts, "-n", "2",
            sys.executable, "-c", RANK, str(sleep_s), token]


class Job:
    """mpirun as the leader pod's process; its output lines collected by a thread."""

    def __init__(self, cluster: Any, g: Groups, argv: list[str], token: str = "-") -> None:
        self.token = token
        self.lines: list[str] = []
        self.started = threading.Event()
        ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

        def run() -> None:  # popen_in_pod: the process dies with the thread that started it
            self.proc = cluster.popen_in_pod(g.ns, g.leader, argv, env=g.env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            ready.set()
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
            self.proc.wait()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(60)

    def wait_for(self, prefix: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(line.startswith(prefix) for line in self.lines) < count:
            assert self.proc is not None and self.proc.poll() is None or self.thread.is_alive(), self.lines
            assert time.monotonic() < deadline, f"no {count} '{prefix}' lines after {timeout}s: {self.lines}"
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        self.thread.join(timeout)
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.thread.join(10)
            raise AssertionError(f"mpirun still running after {timeout}s: {self.lines}")
        return self.proc.returncode


def kubessh_processes(job: Job) -> list[psutil.Process]:
    """The kubessh processes this job's mpirun started (and only those)."""
    assert job.proc is not None
    return kubessh_under(job.proc.pid)


@pytest.mark.parametrize("flavour", ["ompi5", "ompi41"])
def test_open_mpi_job_across_two_pods(cluster: Any, groups: Groups, flavour: str) -> None:
    job = Job(cluster, groups, mpirun_argv(flavour, f"{groups.leader}:1,{groups.worker}:1", 0))
    rc = job.finish(120)
    assert rc == 0, job.lines
    assert sorted(line for line in job.lines if line.startswith(("started", "sum"))) == [
        f"started 0 {groups.leader}", f"started 1 {groups.worker}", "sum 0 3", "sum 1 3"], job.lines


def worker_daemon(job: Job) -> psutil.Process:
    """The MPI daemon in the worker pod: the parent of this job's rank 1."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if job.token in (proc.info["cmdline"] or []) and proc.environ().get("OMPI_COMM_WORLD_RANK") == "1":
                return proc.parent()
        except psutil.Error:
            pass
    raise AssertionError(f"no rank 1 of job {job.token}")




def launch(cluster: Any, g: Groups, flavour: str, env: dict[str, str]) -> Job:
    token = f"job-{uuid.uuid4().hex}"
    job = Job(cluster, replace(g, env={**g.env, **env}),
              mpirun_argv(flavour, f"{g.leader}:1,{g.worker}:1", 4, token), token)
    job.wait_for("started", 2, timeout=120)  # both ranks run: the launch is over
    return job


@pytest.mark.parametrize("flavour", ["ompi5", "ompi41"])
def test_job_goes_on_after_every_kubessh_process_is_killed(cluster: Any, groups: Groups, flavour: str) -> None:
    job = launch(cluster, groups, flavour, {})
    # kwok keeps a command's pipes open after its stream ends (a kubelet does not), so also
    # check what a closed stream would break: the daemon's stdio must not be the stream's
    daemon = worker_daemon(job)
    assert detached_from_the_stream(daemon), ([a.name() for a in daemon.parents()], stdio(daemon))
    killed = kubessh_processes(job)
    for proc in killed:
        proc.kill()
    print(f"\n{flavour}: daemon {daemon.name()} under {[a.name() for a in daemon.parents()]}, stdio {stdio(daemon)}; "
          f"killed {len(killed)} kubessh processes")
    rc = job.finish(120)
    assert rc == 0, job.lines
    assert sorted(line for line in job.lines if line.startswith("sum")) == ["sum 0 3", "sum 1 3"], job.lines


def test_without_detaching_the_daemon_hangs_on_the_exec_stream(cluster: Any, groups: Groups) -> None:
    """The control for the test above: KUBESSH_DETACH=never leaves the daemon on the stream."""
    job = launch(cluster, groups, "ompi5", {"KUBESSH_DETACH": "never"})
    assert not detached_from_the_stream(worker_daemon(job))
    assert len(kubessh_processes(job)) == 1  # PRRTE keeps its agent open for the whole job
    assert job.finish(120) == 0
