"""Pod sandboxes: one network + UTS + mount namespace per simulated node, on a bridge.

A sandbox is a long-lived ``unshare --net --uts --mount`` process with its own
hostname, its own tmpfs on /dev/shm and /run (so /run/secrets/kubernetes.io/...
can hold a pod's service-account files) and an ``eth0`` joined by a veth pair to
a bridge in the host namespace. Anything started with ``Sandbox.command`` (the
kwok of that node, hence every exec into its pod) runs inside it.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

PREFIX = "kc"  # bridges are named kc<owner pid>n<k>; stale ones (dead owner) are removed
LOCK = Path("/tmp/kube-cluster-subnets.lock")
CANDIDATES = [ipaddress.ip_network(f"10.213.{k}.0/24") for k in range(256)]

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


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class Network:
    """A bridge in the host namespace holding ``.1`` of a free 10.213.k.0/24."""

    count = 0

    def __init__(self) -> None:
        Network.count += 1
        self.bridge = f"{PREFIX}{os.getpid()}n{Network.count}"
        self._next = 10
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._remove_stale()
            used = [ipaddress.ip_network(m, strict=False) for m in
                    re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", sh("ip", "-4", "-o", "addr") + sh("ip", "-4", "route"))]
            self.subnet = next(n for n in CANDIDATES if not any(n.overlaps(u) for u in used))
            self.gateway = str(self.subnet[1])
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")

    @staticmethod
    def _remove_stale() -> None:
        for m in re.finditer(rf"^\d+: ({PREFIX}(\d+)n\d+)[:@]", sh("ip", "-o", "link", "show", "type", "bridge"), re.M):
            if not _alive(int(m.group(2))):
                subprocess.run(["ip", "link", "del", m.group(1)], capture_output=True)

    def next_ip(self) -> str:
        self._next += 1
        return str(self.subnet[self._next])

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Sandbox:
    """One simulated host: ``name`` becomes its hostname, ``ip`` the address of its eth0."""

    def __init__(self, name: str, network: Network, workdir: Path) -> None:
        self.name, self.ip = name, network.next_ip()
        self.hosts = workdir / f"{name}.hosts"  # bind-mounted on the sandbox's /etc/hosts
        self.set_hostname(name, write_only=True)
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--uts", "--mount", "--propagation", "private", "--fork", "--kill-child",
             "sh", "-c", SANDBOX_SH, "sandbox", name, str(self.hosts)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=pdeathsig)
        try:
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"sandbox {name} failed to start (exit {self.proc.wait()})")
            self.pid = self.proc.pid
            self.netns = os.readlink(f"/proc/{self.pid}/ns/net")
            host_if = "kv{2}x{3}".format(*self.ip.split("."))  # subnets are unique on the host
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(self.pid))
            sh("ip", "link", "set", host_if, "master", network.bridge, "up")
            sh(*self.command(["ip", "addr", "add", f"{self.ip}/{network.subnet.prefixlen}", "dev", "eth0"]))
            sh(*self.command(["ip", "link", "set", "eth0", "up"]))
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def set_hostname(self, hostname: str, fqdn: str = "", write_only: bool = False) -> None:
        """Hostname and /etc/hosts as a kubelet sets them up for a pod (own name -> own IP)."""
        names = " ".join(dict.fromkeys(n for n in (fqdn, hostname) if n))
        self.hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{self.ip}\t{names}\n")
        if not write_only:
            sh(*self.command(["hostname", hostname]))

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this sandbox (network, hostname, mounts)."""
        return ["nsenter", "-t", str(self.pid), "-n", "-u", "-m", "--", *argv]

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("preexec_fn", pdeathsig)
        return subprocess.Popen(self.command(argv), **kwargs)

    def path(self, inside: str) -> Path:
        """Host path of a file as the sandbox sees it (its own /run and /dev/shm included)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def pids(self) -> list[int]:
        """Every process in this sandbox except the sandbox's own two (unshare and its sleeper)."""
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != self.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(p / "ns/net") == self.netns and _ppid(int(p.name)) != self.pid:
                        out.append(int(p.name))
        return out

    def stop(self) -> None:
        """Kill whatever still runs inside (daemons started through exec too), then the sandbox."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child takes the sleeper with it
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
