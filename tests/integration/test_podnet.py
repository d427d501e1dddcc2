"""Pod sandboxes (tests/podnet.py) and their remote-launch agent, with real mpirun."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.podnet import AGENT, STATE_ROOT, Pod, PodNetwork, processes_in_namespaces

_MISSING_TOOLS = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="pod sandboxes need root (namespaces, bridges)"),
    pytest.mark.skipif(bool(_MISSING_TOOLS), reason=f"missing tools: {_MISSING_TOOLS}"),
]

PYTHON = sys.executable
OMPI5_MPIRUN = Path(sys.prefix, "bin", "mpirun")
OMPI41_MPIRUN = Path("/usr/bin/mpirun")
OMPI41_LIBMPI = "/usr/lib/x86_64-linux-gnu/libmpi.so.40"


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    with PodNetwork() as network:
        network.add_pod("pod0")
        network.add_pod("pod1")
        yield network


def run_in(pod: Pod, argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pod.exec_argv(argv), capture_output=True, text=True, timeout=30, check=check)


def agent(net: PodNetwork, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), *args], input=stdin, capture_output=True, text=True, timeout=30, env={**os.environ, **net.env()}
    )


def test_pods_have_their_own_hostname_shm_and_address(net: PodNetwork) -> None:
    pod0, pod1 = net.pods["pod0"], net.pods["pod1"]
    assert run_in(pod0, ["hostname"]).stdout == "pod0\n"
    assert run_in(pod1, ["hostname"]).stdout == "pod1\n"
    assert run_in(pod0, ["touch", "/dev/shm/only-in-pod0"]).returncode == 0
    assert run_in(pod0, ["ls", "/dev/shm"]).stdout == "only-in-pod0\n"
    assert run_in(pod1, ["ls", "/dev/shm"]).stdout == ""
    assert not Path("/dev/shm/only-in-pod0").exists()
    assert pod0.address != pod1.address
    for pod in (pod0, pod1):
        assert f"inet {pod.address}/24" in run_in(pod, ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout


def test_pods_reach_each_other_by_name_and_the_host_reaches_them(net: PodNetwork) -> None:
    # pod1 answers its hostname to each of two connections: one from pod0, one from the host.
    server = net.pods["pod1"].run(
        [PYTHON, "-c", textwrap.dedent("""
            import socket
            s = socket.create_server(("0.0.0.0", 5000))
            print("listening", flush=True)
            for _ in range(2):
                c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline() == "listening\n"
    client = "import socket, sys; print(socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).recv(99).decode())"
    assert run_in(net.pods["pod0"], [PYTHON, "-c", client, "pod1", "5000"]).stdout == "pod1\n"
    with socket.create_connection((net.pods["pod1"].address, 5000), timeout=5) as conn:
        assert conn.recv(99) == b"pod1"
    assert server.wait(timeout=10) == 0

    with socket.create_server((net.host_address, 0)) as host_server:
        port = host_server.getsockname()[1]
        connect = f"import socket; socket.create_connection(('{net.host_address}', {port}), 5).sendall(b'hi')"
        client_in_pod = net.pods["pod0"].run([PYTHON, "-c", connect])
        host_server.settimeout(5)
        conn, (peer, _) = host_server.accept()
        assert (conn.recv(99), peer) == (b"hi", net.pods["pod0"].address)
        conn.close()
        assert client_in_pod.wait(timeout=10) == 0


def test_agent_runs_pre_quoted_words_in_the_pod_like_ssh(net: PodNetwork) -> None:
    # mpirun quotes words for the remote shell; the agent must not quote them again.
    result = agent(net, "-x", "-l", "root", "pod1", "printf", "'%s\\n'", "'two words'", "\"it's\"", "$(hostname)")
    assert (result.returncode, result.stdout) == (0, "two words\nit's\npod1\n")
    assert agent(net, "root@pod0", "cat; hostname", stdin="from stdin\n").stdout == "from stdin\npod0\n"
    assert agent(net, "pod1", "sh", "-c", "'echo oops >&2; exit 7'").returncode == 7
    assert agent(net, "pod1", "sh", "-c", "'echo oops >&2; exit 7'").stderr == "oops\n"


def test_agent_fails_for_an_unknown_pod(net: PodNetwork) -> None:
    for unknown in ("pod9", "../pod0"):
        result = agent(net, unknown, "true")
        assert result.returncode == 255
        assert result.stderr.count("\n") == 1 and f"unknown pod '{unknown}'" in result.stderr


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _assert_nothing_left(network: PodNetwork, pods: list[Pod]) -> None:
    for pod in pods:
        assert processes_in_namespaces(pod.net_ns, pod.mnt_ns) == []
    lsns = subprocess.run(["lsns", "-n", "-o", "NS"], capture_output=True, text=True, check=True).stdout.split()
    assert not {str(pod.net_ns) for pod in pods} & set(lsns)
    assert [link for link in os.listdir("/sys/class/net") if link.startswith(network.tag)] == []
    assert not network.dir.exists()


def test_exit_removes_pods_links_and_orphans_even_after_a_failure() -> None:
    with pytest.raises(RuntimeError, match="test failure"), PodNetwork() as network:
        pods = [network.add_pod("pod0"), network.add_pod("pod1")]
        for pod in pods:  # orphans in a new session, as daemonized MPI daemons are
            run_in(pod, ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"], check=True)
            assert wait_until(lambda p=pod: [q.cmdline() for q in p.processes()] == [["sleep", "300"]])
        raise RuntimeError("test failure")
    _assert_nothing_left(network, pods)


def test_a_network_left_by_a_killed_owner_is_removed_by_the_next_one() -> None:
    crashed = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent("""
            import time
            from tests.podnet import PodNetwork
            net = PodNetwork(prefix="pnst").__enter__()
            pod = net.add_pod("pod0")
            pod.run(["setsid", "sleep", "300"], preexec_fn=None)  # escapes its starter, as a daemon does
            print(net.tag, pod.pid, pod.net_ns, pod.mnt_ns, flush=True)
            time.sleep(300)
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert crashed.stdout is not None
    tag, pid, net_ns, mnt_ns = crashed.stdout.readline().split()
    crashed.kill()
    crashed.wait()
    assert (STATE_ROOT / tag).is_dir() and Path("/sys/class/net", tag).exists()
    assert processes_in_namespaces(int(net_ns), int(mnt_ns)) != []  # the daemon outlived its owner

    with PodNetwork(prefix="pnst"):
        assert not (STATE_ROOT / tag).exists()
        assert not Path("/sys/class/net", tag).exists()
        assert processes_in_namespaces(int(net_ns), int(mnt_ns)) == []


# Each rank writes a file: Open MPI 4.1 sometimes merges lines of different ranks on stdout.
HELLO = """
import json, pathlib, socket, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1)
pathlib.Path(sys.argv[1], f"{comm.rank}.json").write_text(json.dumps({
    "rank": comm.rank, "size": comm.size, "host": socket.gethostname(), "sum": total,
    "library": MPI.Get_library_version()}))
"""

MPIRUNS = {
    "openmpi5": (
        OMPI5_MPIRUN,
        ["--prtemca", "plm_ssh_agent", str(AGENT), "--prtemca", "plm_ssh_no_tree_spawn", "1"],
        "Open MPI v5.",
    ),
    "openmpi4.1": (
        OMPI41_MPIRUN,
        ["--mca", "plm_rsh_agent", str(AGENT), "--mca", "plm_rsh_no_tree_spawn", "1",
         # mpi4py's PyPI wheel would otherwise load the virtualenv's Open MPI 5 library.
         "-x", f"MPI4PY_LIBMPI={OMPI41_LIBMPI}"],
        "Open MPI v4.1.",
    ),  # fmt: skip
}


@pytest.mark.parametrize("version", MPIRUNS)
def test_mpi4py_allreduce_across_two_pods(net: PodNetwork, tmp_path: Path, version: str) -> None:
    mpirun, flags, library = MPIRUNS[version]
    if not mpirun.exists():
        pytest.skip(f"{mpirun} is missing")
    hello, results = tmp_path / "hello.py", tmp_path / "results"
    hello.write_text(HELLO)
    results.mkdir()
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    argv = [str(mpirun), *root, "--host", "pod0:2,pod1:2", "-np", "4", *flags, PYTHON, str(hello), str(results)]
    # On a timeout the fixture's teardown kills mpirun with everything else in the pods.
    leader = net.pods["pod0"].run(
        argv, env={**os.environ, **net.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = leader.communicate(timeout=60)
    assert leader.returncode == 0, out + err
    ranks = [json.loads((results / f"{rank}.json").read_text()) for rank in range(4)]
    assert [(r["rank"], r["size"], r["host"], r["sum"]) for r in ranks] == [
        (0, 4, "pod0", 10), (1, 4, "pod0", 10), (2, 4, "pod1", 10), (3, 4, "pod1", 10),
    ]  # fmt: skip
    assert all(r["library"].startswith(library) for r in ranks), ranks[0]["library"]


def test_pod_environment_reaches_local_and_agent_commands() -> None:
    with PodNetwork() as network:
        pod = network.add_pod("gpu1", env={"CUDA_VISIBLE_DEVICES": "2,3"})
        assert run_in(pod, ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]).stdout == "2,3\n"
        assert agent(network, "gpu1", "echo", "$CUDA_VISIBLE_DEVICES").stdout == "2,3\n"
