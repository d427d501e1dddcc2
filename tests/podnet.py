"""Several Kubernetes-like "pods" on one machine, for integration tests.

A pod sandbox is a long-lived process started with
``unshare --net --uts --mount --propagation private`` that sets its own
hostname (the pod name), mounts a private tmpfs on /dev/shm and bind-mounts
a private /etc/hosts listing every pod. Its network namespace is joined to a
per-network Linux bridge by a veth pair (``eth0`` inside the pod). The bridge
carries an address too, so the host reaches every pod. Nothing is routed
anywhere else: pods have no default route and the subnet exists only on the
bridge this module creates.

Commands enter a pod with ``nsenter -t <pid> -n -u -m`` (``Pod.exec_argv``),
and Open MPI reaches remote pods through ``tests/agents/pod-rsh`` (``AGENT``),
which finds the sandboxes through ``PODNET_DIR`` (``PodNetwork.env()``).

A private hostname and /dev/shm per pod are required: Open MPI 4.1's
shared-memory transport (btl vader) names its segments after the hostname, so
two "pods" sharing both crash.

What Open MPI needs (checked with Debian Open MPI 4.1.4 and PyPI 5.0.11,
mpirun started inside the leader pod with ``--host pod0:2,pod1:2 -np 4``):

- Open MPI 5: ``--prtemca plm_ssh_agent AGENT --prtemca plm_ssh_no_tree_spawn 1``
  (``--mca plm_rsh_agent AGENT`` is accepted too).
- Open MPI 4.1: ``--mca plm_rsh_agent AGENT --mca plm_rsh_no_tree_spawn 1``.
- Both: ``--allow-run-as-root`` as root. No interface restriction is needed
  (a pod has only ``lo`` and ``eth0``; both versions skip loopback for
  inter-node traffic), nor ``btl_vader_single_copy_mechanism=none``.
  ``--mca btl_tcp_if_include eth0`` plus ``--mca oob_tcp_if_include eth0``
  (4.1) or ``--prtemca oob_tcp_if_include eth0`` (5) also work.
- The agent gets ``-x`` before the pod name only when its basename is
  ``ssh``. With no tree spawn, both versions start remote daemons with
  ``--daemonize``: Open MPI 4.1's agent call returns at once, Open MPI 5's
  stays open (prted's parent waits) for the whole job.
- mpirun killed by SIGKILL: remote daemons notice within a second and kill
  their ranks. Open MPI 5 leaves the leader pod's own ranks running unless
  they are blocked in an MPI call (a sleeping rank 0 outlived it by 45 s);
  Open MPI 4.1's ranks all exit within ~2 s. After SIGTERM both versions
  clean up every pod, escalating to SIGKILL for ranks that ignore SIGTERM.
- There is no PID namespace: ``ps``/psutil inside a pod see every process
  on the machine; ``Pod.processes()`` lists only the pod's own.
- mpi4py from PyPI (4.x) ships one extension per MPI ABI and dlopens the
  virtualenv's ``lib/libmpi.so`` (Open MPI 5) first. Under Open MPI 4.1's
  mpirun it silently keeps using the 5.0 library (and still runs, since PMIx
  talks across versions) unless ranks get
  ``MPI4PY_LIBMPI=/usr/lib/x86_64-linux-gnu/libmpi.so.40``.
- The agent ``tests/agents/pod-rsh`` starts the remote shell with a clean
  environment (PATH, HOME and the pod's own variables), as ssh and an exec
  through the API do: whatever a remote rank needs from mpirun's environment
  must be forwarded with -x.

Usage::

    with PodNetwork() as net:
        leader, worker = net.add_pod("pod0"), net.add_pod("pod1")
        mpirun = leader.run([...mpirun argv...], env={**os.environ, **net.env()})

Everything is named ``<prefix><6 hex>`` so parallel runs do not collide.
State lives in ``/run/podnet/<tag>/``; a later ``PodNetwork`` removes the
objects of a run whose owning process is gone.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

AGENT = Path(__file__).resolve().parent / "agents" / "pod-rsh"
STATE_ROOT = Path("/run/podnet")
SUPERNET = ipaddress.IPv4Network("10.231.0.0/16")
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_READY_TIMEOUT_S = 10.0

# $1: hostname, $2: hosts file. Prints "ready" once the sandbox is set up.
_SANDBOX_SCRIPT = (
    'hostname "$1" && mount -t tmpfs tmpfs /dev/shm'
    ' && mount --bind "$2" /etc/hosts && ip link set lo up'
    " && echo ready && exec sleep infinity"
)


def _ip(*args: str, netns_pid: int | None = None) -> None:
    prefix = ["nsenter", "-t", str(netns_pid), "-n"] if netns_pid else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _delete_link(name: str) -> None:
    # A veth also vanishes on its own when its peer's netns is freed.
    if _link_exists(name):
        try:
            _ip("link", "del", name)
        except subprocess.CalledProcessError:
            if _link_exists(name):
                raise


def _namespace_ids(pid: int) -> tuple[int, int] | None:
    """(net, mnt) namespace inodes of a process, or None if it is gone."""
    try:
        return (os.stat(f"/proc/{pid}/ns/net").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino)
    except OSError:
        return None


def processes_in_namespaces(net_ns: int, mnt_ns: int) -> list[psutil.Process]:
    """Every process whose network or mount namespace is the given one."""
    found = []
    for process in psutil.process_iter():
        ids = _namespace_ids(process.pid)
        if ids is not None and (ids[0] == net_ns or ids[1] == mnt_ns):
            found.append(process)
    return found


def _kill_namespaces(net_ns: int, mnt_ns: int, timeout_s: float = 10.0) -> None:
    # Repeat: a process may fork while we kill its siblings.
    deadline = time.monotonic() + timeout_s
    while processes := processes_in_namespaces(net_ns, mnt_ns):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {[p.pid for p in processes]}")
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        # Poll rather than wait(): waiting would reap our own Popen children
        # and hide their exit status from their owners. Zombies leave their
        # namespaces, so the next scan no longer lists them.
        time.sleep(0.02)


@dataclass(frozen=True)
class Pod:
    name: str
    address: str
    pid: int
    net_ns: int
    mnt_ns: int
    env: tuple[tuple[str, str], ...] = ()

    def exec_argv(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """Prefix that runs argv inside this pod (cwd defaults to ours; nsenter would use /)."""
        workdir = os.fspath(cwd) if cwd is not None else os.getcwd()
        own_env = ["env", *(f"{k}={v}" for k, v in self.env)] if self.env else []
        return ["nsenter", "-t", str(self.pid), "-n", "-u", "-m", f"--wd={workdir}", "--", *own_env, *argv]

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.exec_argv(argv, popen_kwargs.get("cwd")), **popen_kwargs)

    def processes(self) -> list[psutil.Process]:
        """Processes running inside this pod, the sandbox process excluded."""
        return [p for p in processes_in_namespaces(self.net_ns, self.mnt_ns) if p.pid != self.pid]


class PodNetwork:
    """A bridge plus pods; a context manager that removes everything on exit."""

    def __init__(self, prefix: str = "pn") -> None:
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise ValueError(f"prefix {prefix!r} must be 1-4 lowercase letters")
        self.prefix = prefix
        self.tag = prefix + secrets.token_hex(3)
        self.bridge = self.tag
        self.dir = STATE_ROOT / self.tag
        self.pods: dict[str, Pod] = {}
        self.subnet: ipaddress.IPv4Network | None = None
        self._sandboxes: list[subprocess.Popen[bytes]] = []

    @property
    def host_address(self) -> str:
        assert self.subnet is not None, "PodNetwork is not open"
        return str(self.subnet.network_address + 1)

    def env(self) -> dict[str, str]:
        """Environment that lets AGENT find this network's pods."""
        return {"PODNET_DIR": str(self.dir)}

    def __enter__(self) -> PodNetwork:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        with open(STATE_ROOT / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale_networks(self.prefix)
            self.subnet = self._free_subnet()
            self.dir.mkdir()
            self._save_state()
            (self.dir / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = [
            ipaddress.ip_interface(a["local"] + "/" + str(a["prefixlen"])).network
            for link in json.loads(subprocess.check_output(["ip", "-j", "-4", "addr"]))
            for a in link.get("addr_info", [])
        ]
        for candidate in SUPERNET.subnets(new_prefix=24):
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise RuntimeError(f"no free /24 left in {SUPERNET}")

    def add_pod(self, name: str, env: Mapping[str, str] | None = None) -> Pod:
        """A new pod; ``env`` is the pod's own environment (e.g. the GPUs it was given),
        applied to everything started in it, by ``Pod.exec_argv`` and by the agent."""
        if not _POD_NAME.fullmatch(name) or name in self.pods:
            raise ValueError(f"pod name {name!r} must be a new DNS label (lowercase letters, digits, '-')")
        assert self.subnet is not None, "PodNetwork is not open"
        index = len(self.pods)
        address = str(self.subnet.network_address + 10 + index)
        veth = f"{self.tag}v{index}"
        sandbox = subprocess.Popen(
            ["unshare", "--net", "--uts", "--mount", "--propagation", "private", "--",
             "sh", "-c", _SANDBOX_SCRIPT, "pod-sandbox", name, str(self.dir / "hosts")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._sandboxes.append(sandbox)
        self._wait_ready(sandbox, name)
        ids = _namespace_ids(sandbox.pid)
        assert ids is not None
        pod = Pod(name, address, sandbox.pid, *ids, env=tuple(sorted((env or {}).items())))
        self.pods[name] = pod
        self._save_state()
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pod.pid))
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", netns_pid=pod.pid)
        _ip("link", "set", "eth0", "up", netns_pid=pod.pid)
        with open(self.dir / "hosts", "a") as hosts:  # in place: every sandbox bind-mounts this inode
            hosts.write(f"{address} {name}\n")
        if pod.env:
            (self.dir / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in pod.env))
        (self.dir / f"{name}.pid").write_text(f"{pod.pid}\n")
        return pod

    @staticmethod
    def _wait_ready(sandbox: subprocess.Popen[bytes], name: str) -> None:
        assert sandbox.stdout is not None and sandbox.stderr is not None
        ready, _, _ = select.select([sandbox.stdout], [], [], _READY_TIMEOUT_S)
        line = sandbox.stdout.readline() if ready else b""
        sandbox.stdout.close()
        if line != b"ready\n":
            sandbox.kill()
            error = sandbox.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"pod sandbox {name!r} did not start: {error or 'timeout'}")
        sandbox.stderr.close()

    def _save_state(self) -> None:
        owner = psutil.Process()
        state = {
            "owner_pid": owner.pid,
            "owner_create_time": owner.create_time(),
            "bridge": self.bridge,
            "pods": [
                {"veth": f"{self.tag}v{i}", "pid": pod.pid, "create_time": psutil.Process(pod.pid).create_time(),
                 "net_ns": pod.net_ns, "mnt_ns": pod.mnt_ns}
                for i, pod in enumerate(self.pods.values())
            ],
        }
        (self.dir / "state.json").write_text(json.dumps(state))

    def close(self) -> None:
        """Kill every process in every pod, delete links and state; safe to call twice.

        Every step runs even if an earlier one fails; the first error is raised.
        """
        errors: list[Exception] = []

        def attempt(step: Callable[[], None]) -> None:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        for i, pod in enumerate(self.pods.values()):
            attempt(functools.partial(_delete_link, f"{self.tag}v{i}"))
            attempt(functools.partial(_kill_namespaces, pod.net_ns, pod.mnt_ns))
        for sandbox in self._sandboxes:
            sandbox.kill()
            sandbox.wait()
        attempt(functools.partial(_delete_link, self.bridge))
        if not errors:  # keep the state for remove_stale_networks otherwise
            shutil.rmtree(self.dir, ignore_errors=True)
            self.pods.clear()
            self._sandboxes.clear()
        if errors:
            raise errors[0]


def _same_process(pid: int, create_time: float) -> bool:
    try:
        return bool(psutil.Process(pid).create_time() == create_time)
    except psutil.NoSuchProcess:
        return False


def remove_stale_networks(prefix: str) -> None:
    """Tear down networks left by dead owners; only those PodNetwork recorded."""
    for state_file in STATE_ROOT.glob(f"{prefix}*/state.json"):
        if not re.fullmatch(prefix + "[0-9a-f]{6}", state_file.parent.name):
            continue  # another prefix, e.g. "pnst" when looking for "pn"
        try:
            state = json.loads(state_file.read_text())
            if _same_process(state["owner_pid"], state["owner_create_time"]):
                continue  # owner alive: a parallel run
        except (OSError, ValueError, KeyError):
            continue  # not a state file we understand: leave it alone
        for pod in state["pods"]:
            # Namespace inodes are reused once a namespace is freed: trust them
            # only while our sandbox or our veth (which dies with the netns) lives.
            if _link_exists(pod["veth"]) or _same_process(pod["pid"], pod["create_time"]):
                _kill_namespaces(pod["net_ns"], pod["mnt_ns"])
                _delete_link(pod["veth"])
        _delete_link(state["bridge"])
        shutil.rmtree(state_file.parent, ignore_errors=True)
