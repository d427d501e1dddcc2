"""Sandboxes: simulated hosts on one machine, each its own network, UTS and mount namespace on a bridge.

The one implementation behind the control plane's kwok node sandboxes (``controlplane.py``) and the
integration tests' pods (``tests/podnet.py``).

A sandbox is a long-lived ``unshare --net --uts --mount --propagation private --fork --kill-child``
process with its own hostname, a hosts file bind-mounted on /etc/hosts (its own, or one shared by every
sandbox of a network), private tmpfs on /dev/shm and /run (so /run/secrets/kubernetes.io/... can hold a
pod's service-account files), and an ``eth0`` joined by a veth pair to the network's bridge. The bridge
holds the subnet's ``.1``, so this machine reaches every sandbox; nothing is routed anywhere else.

A private hostname and /dev/shm per sandbox are required: Open MPI 4.1's shared-memory transport (btl
vader) names its segments after the hostname, so two sandboxes sharing both crash.

A network is named ``<prefix><6 hex>`` (its bridge, its veths ``<name>v<k>``) and records its owner and
every sandbox's namespaces in ``/tmp/sandboxes/<name>/state.json``. The sandbox processes die with the
thread that started them (PR_SET_PDEATHSIG); what a killed run started inside them may not, so a later
network of the same prefix kills what is left in the namespaces of a dead owner's network and removes
its links and state.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

STATE_ROOT = Path("/tmp/sandboxes")  # not under /run: every sandbox mounts its own
LOCK = Path("/tmp/kube-cluster-subnets.lock")  # held while a subnet is chosen (real nodes take theirs too)
READY_TIMEOUT_S = 10.0

# $1: hostname, $2: hosts file. Prints "ready" once the sandbox is set up.
SANDBOX_SH = r"""set -e
hostname "$1"
mount --bind "$2" /etc/hosts
mount -t tmpfs -o size=1g,mode=1777 shm /dev/shm
mount -t tmpfs -o mode=755 run /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
ip link set lo up
echo ready
exec sleep infinity
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def pdeathsig() -> None:
    """preexec_fn: the child is SIGKILLed when the thread that started it ends (so when the test run dies)."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def namespace_ids(pid: int) -> tuple[int, int] | None:
    """(net, mnt) namespace inodes of a process, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def processes_in_namespaces(net_ns: int, mnt_ns: int) -> list[psutil.Process]:
    """Every process whose network or mount namespace is the given one."""
    found = []
    for process in psutil.process_iter():
        ids = namespace_ids(process.pid)
        if ids is not None and (ids[0] == net_ns or ids[1] == mnt_ns):
            found.append(process)
    return found


def kill_namespaces(net_ns: int, mnt_ns: int, timeout_s: float = 10.0) -> None:
    # Repeat: a process may fork while we kill its siblings.
    deadline = time.monotonic() + timeout_s
    while processes := processes_in_namespaces(net_ns, mnt_ns):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {[p.pid for p in processes]}")
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        # Poll rather than wait(): waiting would reap our own Popen children and hide their exit
        # status from their owners. Zombies leave their namespaces, so the next scan no longer lists them.
        time.sleep(0.02)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def delete_link(name: str) -> None:
    # A veth also vanishes on its own when its peer's network namespace is freed.
    if link_exists(name):
        try:
            sh("ip", "link", "del", name)
        except subprocess.CalledProcessError:
            if link_exists(name):
                raise


def _same_process(pid: int, create_time: float) -> bool:
    try:
        return bool(psutil.Process(pid).create_time() == create_time)
    except psutil.NoSuchProcess:
        return False


class Network:
    """A bridge holding ``.1`` of a free /24 of ``supernet``, and the sandboxes on it."""

    def __init__(self, prefix: str = "kc", supernet: str = "10.213.0.0/16") -> None:
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise ValueError(f"prefix {prefix!r} must be 1-4 lowercase letters")
        self.prefix, self.supernet = prefix, ipaddress.IPv4Network(supernet)
        self.name = prefix + secrets.token_hex(3)
        self.bridge = self.name
        self.dir = STATE_ROOT / self.name
        self.sandboxes: list[Sandbox] = []
        self._next = 10
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale(prefix)
            self.subnet = self._free_subnet()
            self.gateway = str(self.subnet[1])
            self.dir.mkdir()
            self._save_state()
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = [ipaddress.ip_network(m, strict=False) for m in
                re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", sh("ip", "-4", "-o", "addr") + sh("ip", "-4", "route"))]
        for candidate in self.supernet.subnets(new_prefix=24):
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise RuntimeError(f"no free /24 left in {self.supernet}")

    def next_ip(self) -> str:
        self._next += 1
        return str(self.subnet[self._next])

    def add(self, name: str, hosts: Path, env: Mapping[str, str] | None = None) -> Sandbox:
        """A new sandbox named ``name`` (its hostname) whose /etc/hosts is ``hosts``."""
        sandbox = Sandbox(name, self, hosts, env)
        self.sandboxes.append(sandbox)
        self._save_state()
        return sandbox

    def _save_state(self) -> None:
        owner = psutil.Process()
        state = {"owner_pid": owner.pid, "owner_create_time": owner.create_time(), "bridge": self.bridge,
                 "sandboxes": [{"veth": s.veth, "pid": s.pid, "create_time": psutil.Process(s.pid).create_time(),
                                "net_ns": s.net_ns, "mnt_ns": s.mnt_ns} for s in self.sandboxes]}
        (self.dir / "state.json").write_text(json.dumps(state))

    def close(self) -> None:
        """Stop every sandbox (and whatever runs inside), delete the links and the state; safe to call twice.
        Every step runs even if an earlier one fails; the first error is raised."""
        errors: list[Exception] = []

        def attempt(step: Callable[[], None]) -> None:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        for sandbox in self.sandboxes:
            attempt(sandbox.stop)
        attempt(lambda: delete_link(self.bridge))
        if errors:  # keep the state for remove_stale
            raise errors[0]
        shutil.rmtree(self.dir, ignore_errors=True)
        self.sandboxes.clear()


class Sandbox:
    """One simulated host: ``name`` is its hostname, ``ip`` the address of its eth0."""

    def __init__(self, name: str, network: Network, hosts: Path, env: Mapping[str, str] | None = None) -> None:
        self.name, self.network, self.hosts = name, network, hosts
        self.ip = network.next_ip()
        self.env = tuple(sorted((env or {}).items()))  # its own variables, given to what runs inside
        self.veth = f"{network.name}v{len(network.sandboxes)}"
        if not hosts.exists():
            self.set_hostname(name, write_only=True)
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--uts", "--mount", "--propagation", "private", "--fork", "--kill-child",
             "sh", "-c", SANDBOX_SH, "sandbox", name, str(hosts)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=pdeathsig)
        try:
            self._wait_ready()
            self.pid = self.proc.pid
            ids = namespace_ids(self.pid)
            assert ids is not None
            self.net_ns, self.mnt_ns = ids
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", str(self.pid))
            sh("ip", "link", "set", self.veth, "master", network.bridge, "up")
            sh(*self.command(["ip", "addr", "add", f"{self.ip}/{network.subnet.prefixlen}", "dev", "eth0"]))
            sh(*self.command(["ip", "link", "set", "eth0", "up"]))
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def address(self) -> str:
        return self.ip

    def _wait_ready(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        self.proc.stdout.close()
        if line != b"ready\n":
            self.proc.kill()
            error = self.proc.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"sandbox {self.name!r} did not start: {error or 'timeout'}")
        self.proc.stderr.close()

    def set_hostname(self, hostname: str, fqdn: str = "", write_only: bool = False) -> None:
        """Hostname and an own /etc/hosts as a kubelet sets them up for a pod (own name -> own IP)."""
        names = " ".join(dict.fromkeys(n for n in (fqdn, hostname) if n))
        self.hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{self.ip}\t{names}\n")
        if not write_only:
            sh(*self.command(["hostname", hostname]))

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this sandbox (network, hostname, mounts; cwd /)."""
        return ["nsenter", "-t", str(self.pid), "-n", "-u", "-m", "--", *argv]

    def exec_argv(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """``argv`` inside this sandbox with its own variables, in ``cwd`` (default: ours; nsenter would use /)."""
        workdir = os.fspath(cwd) if cwd is not None else os.getcwd()
        own_env = ["env", *(f"{k}={v}" for k, v in self.env)] if self.env else []
        return ["nsenter", "-t", str(self.pid), "-n", "-u", "-m", f"--wd={workdir}", "--", *own_env, *argv]

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this sandbox; it dies with the thread that started it."""
        popen_kwargs.setdefault("preexec_fn", pdeathsig)
        return subprocess.Popen(self.exec_argv(argv, popen_kwargs.get("cwd")), **popen_kwargs)

    def path(self, inside: str) -> Path:
        """Host path of a file as the sandbox sees it (its own /run and /dev/shm included)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def processes(self) -> list[psutil.Process]:
        """Processes running inside this sandbox, but for its own (unshare and its sleeper)."""
        return [p for p in processes_in_namespaces(self.net_ns, self.mnt_ns)
                if p.pid != self.pid and _parent(p) != self.pid]

    def stop(self) -> None:
        """Kill whatever runs inside (daemons started through exec too), then the sandbox."""
        delete_link(self.veth)
        kill_namespaces(self.net_ns, self.mnt_ns)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _parent(process: psutil.Process) -> int:
    try:
        return int(process.ppid())
    except psutil.Error:
        return -1


def remove_stale(prefix: str) -> None:
    """Tear down the networks a dead owner left (only those recorded with this prefix's name)."""
    for state_file in STATE_ROOT.glob(f"{prefix}*/state.json"):
        if not re.fullmatch(prefix + "[0-9a-f]{6}", state_file.parent.name):
            continue  # another prefix, e.g. "pnst" when looking for "pn"
        try:
            state = json.loads(state_file.read_text())
            if _same_process(state["owner_pid"], state["owner_create_time"]):
                continue  # owner alive: a parallel run
        except (OSError, ValueError, KeyError):
            continue  # not a state file we understand: leave it alone
        for sandbox in state["sandboxes"]:
            # Namespace inodes are reused once a namespace is freed: trust them
            # only while our sandbox or our veth (which dies with the netns) lives.
            if link_exists(sandbox["veth"]) or _same_process(sandbox["pid"], sandbox["create_time"]):
                kill_namespaces(sandbox["net_ns"], sandbox["mnt_ns"])
                delete_link(sandbox["veth"])
        delete_link(state["bridge"])
        shutil.rmtree(state_file.parent, ignore_errors=True)
