"""Real nodes beside the kwok nodes: containerd + runc + CNI bridge + kubelet, and one kube-proxy.

Each node is a kubelet (built from the same module as the control plane) with its own containerd
(Debian's 1.6, its own root, state and socket: two kubelets on one containerd would each remove the
other's pod sandboxes as unknown), its own cgroup root under every cgroup v1 hierarchy, and its own
CNI bridge and pod subnet (10.214.k.0/24). Nodes and pods share this machine's network namespace
for routing, so a pod reaches the other node's pods through the host, and the apiserver on the
control plane's bridge. One kube-proxy (iptables mode) programs Services in that namespace for both
nodes: a ClusterIP reaches the leader from a pod and from the host alike.

Real nodes carry the label ``lws-test/node=real`` and the taint ``lws-test/real-node:NoSchedule`` so
that only pods asking for them land there; kwok's fake nodes keep every other test's pods.

Facts of this VM the configuration relies on (see cluster/README.md): cgroup v1 only (kubelet
``failCgroupV1: false``, cgroupfs driver); no CAP_SYS_RESOURCE (containerd's
``restrict_oom_score_adj``); no registry (images are imported from cluster/image.sh's archives).
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .controlplane import BIN, CACHE, SYSTEM_PATH, Cluster, Proc, free_port, wait_for
from .sandbox import LOCK, sh

IMAGES = CACHE / "images"  # cluster/image.sh's archives
CNI_BIN = BIN / "cni"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
PREFIX = "lr"  # node ids: lr<owner pid>n<k>, the name of the node's bridge, cgroup root and directory
CGROUP = Path("/sys/fs/cgroup")
POD_NETWORKS = [ipaddress.IPv4Network(f"10.214.{k}.0/24") for k in range(256)]
CLUSTER_CIDR = "10.214.0.0/16"
NODE_LABEL = ("lws-test/node", "real")
TAINT = {"key": "lws-test/real-node", "value": "true", "effect": "NoSchedule"}
SHIM = "containerd-shim-runc-v2"
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")  # fixed in the kubelet


@dataclass
class RealNode:
    name: str
    id: str  # lr<owner pid>n<k>: unique on this machine; a dead owner marks what a killed run left
    ip: str
    subnet: ipaddress.IPv4Network
    dir: Path  # .../real-nodes/<id>
    containerd: Proc | None = None
    kubelet: Proc | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def bridge(self) -> str:
        return self.id

    @property
    def cgroup_root(self) -> str:
        return f"/{self.id}"

    def ctr(self, *args: str, timeout: float = 600) -> str:
        return subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              check=True, capture_output=True, text=True, timeout=timeout).stdout


class RealNodes:
    """``count`` real nodes on ``cluster``: ``start()`` registers them Ready with the images imported."""

    def __init__(self, cluster: Cluster, count: int) -> None:
        self.cluster, self.count = cluster, count
        self.dir = cluster.workdir / "real-nodes"
        self.nodes: list[RealNode] = []
        self.proxy: Proc | None = None
        self.archives = {name: IMAGES / f"{name}.tar" for name in ("pause", "lws-triton")}
        self.refs = {name: (IMAGES / f"{name}.ref").read_text().strip() if (IMAGES / f"{name}.ref").exists() else ""
                     for name in self.archives}

    @property
    def image(self) -> str:
        """The project image's reference (cluster/image.sh)."""
        return self.refs["lws-triton"]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> RealNodes:
        missing = [str(p) for p in [*self.archives.values(), *(CNI_BIN / p for p in CNI_PLUGINS),
                                    BIN / "kubelet", BIN / "kube-proxy"] if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing {missing}: run cluster/build.sh and cluster/image.sh first")
        for tool in ("containerd", "runc", "ctr", SHIM, "iptables"):
            if not _which(tool):
                raise FileNotFoundError(f"{tool} not found: install Debian's containerd, runc and iptables")
        remove_stale()
        _sysctl("net/ipv4/ip_forward", "1")
        _sysctl("net/bridge/bridge-nf-call-iptables", "1")  # Service traffic between pods of one bridge
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._allocate()
            for node in self.nodes:
                self._start_containerd(node)
            self._import_images()
            for node in self.nodes:
                # every kubelet serves its device-plugin socket at this one fixed path, and two starting at
                # once both clean the directory and then bind: one fails. One after the other, the later
                # takes the path over (no device plugin runs here).
                DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True)
                self._start_kubelet(node)
                assert node.kubelet is not None
                wait_for(f"the device-plugin socket of {node.name}", DEVICE_PLUGIN_SOCKET.exists, 60, [node.kubelet])
            self._start_proxy()
            self._wait_ready()
            self._advertise({"nvidia.com/gpu": "1"})  # one GPU per node: a group of tp=2 spans both nodes
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the kubelets, then every container and shim, containerd, kube-proxy's rules, the bridges."""
        for node in self.nodes:
            if node.kubelet is not None:
                node.kubelet.stop(timeout=5)
        for node in self.nodes:
            _kill_node(node.id)
            if node.containerd is not None:
                node.containerd.stop(timeout=5)
            _unmount_under(f"/{node.id}/")
            _remove_cgroup(node.cgroup_root)
            subprocess.run(["ip", "link", "del", node.bridge], capture_output=True)
        if self.proxy is not None:
            self.proxy.stop(timeout=5)
            subprocess.run([str(BIN / "kube-proxy"), "--cleanup"], capture_output=True)
            self.proxy = None
        self.nodes.clear()

    # ---------------------------------------------------------------- pieces
    def _allocate(self) -> None:
        assert self.cluster.network is not None
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = [ipaddress.ip_network(m, strict=False) for m in re.findall(
                r"(\d+\.\d+\.\d+\.\d+/\d+)", sh("ip", "-4", "-o", "addr") + sh("ip", "-4", "route"))]
            free = iter(n for n in POD_NETWORKS if not any(n.overlaps(u) for u in used))
            for i in range(self.count):
                node_id = f"{PREFIX}{os.getpid()}n{i}"
                d = self.dir / node_id
                d.mkdir(parents=True, exist_ok=True)
                # each node its own address on the control plane's bridge, where the apiserver listens
                ip = self.cluster.network.next_ip()
                sh("ip", "addr", "add", f"{ip}/32", "dev", self.cluster.network.bridge)
                subnet = next(free)
                # CNI's bridge plugin creates it on the first pod; made here so the subnet is taken at once
                sh("ip", "link", "add", node_id, "type", "bridge")
                sh("ip", "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", node_id)
                sh("ip", "link", "set", node_id, "up")
                self.nodes.append(RealNode(f"real-{i}", node_id, ip, subnet, d))

    def _start_containerd(self, node: RealNode) -> None:
        d = node.dir
        (d / "cni").mkdir(exist_ok=True)
        (d / "cni" / "10-lws-test.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "lws-test", "plugins": [
                {"type": "bridge", "bridge": node.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(d / "cni-ipam"), "ranges": [[{
                     "subnet": str(node.subnet), "gateway": str(node.subnet[1])}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}}]}))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = d / "containerd.toml"
        config.write_text(f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.socket}.ttrpc"
[{cri}]
  sandbox_image = "{self.refs['pause']}"
  # this VM drops CAP_SYS_RESOURCE: an oom_score_adj below containerd's own cannot be set
  restrict_oom_score_adj = true
  # pod network namespaces under the node's own directory, not the machine's /run/netns
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d / 'cni'}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
""")
        node.containerd = self.cluster._proc(f"containerd-{node.name}", ["containerd", f"--config={config}"],
                                             env={"PATH": SYSTEM_PATH})
        wait_for(f"containerd of {node.name}", lambda: node.ctr("version", timeout=5), 30, [node.containerd])

    def _import_images(self) -> None:
        """Every archive into every node's containerd, all at once (unpacking is what takes time)."""
        imports = [(node, subprocess.Popen(
            ["ctr", "--address", str(node.socket), "--namespace", "k8s.io", "images", "import", str(archive)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            for node in self.nodes for archive in self.archives.values()]
        for node, proc in imports:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"ctr images import into {node.name} failed: {err.strip()}")

    def _start_kubelet(self, node: RealNode) -> None:
        c = self.cluster
        d = node.dir
        _make_cgroup(node.cgroup_root)
        crt, key = c.ca.issue(f"kubelet-{node.name}", node.name, hosts=(node.ip, node.name), server=True)
        kubeconfig = c._write_kubeconfig(f"system:node:{node.name}", *c.ca.issue(
            f"kubelet-client-{node.name}", f"system:node:{node.name}", orgs=("system:nodes",), client=True))
        resolv_conf = d / "resolv.conf"
        resolv_conf.write_text("nameserver 127.0.0.1\n")
        config = d / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": node.ip, "port": 10250, "readOnlyPort": 0, "healthzPort": 0,
            "tlsCertFile": str(crt), "tlsPrivateKeyFile": str(key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(c.ca_path)}},
            "authorization": {"mode": "AlwaysAllow"},
            # this VM has cgroup v1 only
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupRoot": node.cgroup_root,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{node.socket}",
            "podLogsDir": str(d / "pod-logs"),
            "registerWithTaints": [TAINT],
            "maxPods": 16,
            # a shared test machine: never evict for its disk, never collect the imported images
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            # no cluster DNS, and this machine's resolver must not see pod traffic: a pod's own loopback
            # refuses at once, so a lookup fails as fast as one for a name no cluster DNS knows (with
            # no nameserver at all, containerd would copy this machine's resolv.conf instead)
            "resolvConf": str(resolv_conf),
            "shutdownGracePeriod": "0s",
        }))
        node.kubelet = c._proc(f"kubelet-{node.name}", [
            str(BIN / "kubelet"), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--hostname-override={node.name}", f"--node-ip={node.ip}", f"--root-dir={d / 'kubelet'}",
            f"--node-labels={'='.join(NODE_LABEL)}", "--v=2"], env={"PATH": SYSTEM_PATH})

    def _start_proxy(self) -> None:
        c = self.cluster
        kubeconfig = c._write_kubeconfig("system:kube-proxy", *c.ca.issue(
            "kube-proxy", "system:kube-proxy", client=True))
        config = self.dir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)}, "hostnameOverride": self.nodes[0].name,
            "mode": "iptables", "clusterCIDR": CLUSTER_CIDR,
            "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
            # leave the machine's conntrack table settings alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": f"127.0.0.1:{free_port()}", "healthzBindAddress": f"127.0.0.1:{free_port()}",
        }))
        self.proxy = c._proc("kube-proxy", [str(BIN / "kube-proxy"), f"--config={config}", "--v=1"],
                             env={"PATH": SYSTEM_PATH})

    def _wait_ready(self) -> None:
        from kubernetes import client
        core = client.CoreV1Api(self.cluster.api)
        names = {n.name for n in self.nodes}

        def ready() -> bool:
            nodes = [n for n in core.list_node().items if n.metadata.name in names]
            return len(nodes) == len(names) and all(
                any(cond.type == "Ready" and cond.status == "True" for cond in n.status.conditions or [])
                for n in nodes)
        wait_for("real nodes Ready", ready, 120, [p for n in self.nodes for p in (n.containerd, n.kubelet) if p]
                 + ([self.proxy] if self.proxy else []))

    # ---------------------------------------------------------------- helpers for tests
    def node(self, name: str) -> RealNode:
        return next(n for n in self.nodes if n.name == name)

    def container_pid(self, namespace: str, pod: str, container: str) -> int:
        """Host PID of a running container's main process (its PID 1), from the kubelet's status and containerd."""
        from kubernetes import client
        p = client.CoreV1Api(self.cluster.api).read_namespaced_pod(pod, namespace)
        status = next((s for s in p.status.container_statuses or [] if s.name == container), None)
        if status is None or not status.container_id or status.state.running is None:
            raise LookupError(f"container {container} of {namespace}/{pod} is not running")
        cid = status.container_id.split("://", 1)[1]
        for line in self.node(p.spec.node_name).ctr("tasks", "ls").splitlines()[1:]:
            task, pid, state = line.split()[:3]
            if task == cid and state == "RUNNING":
                return int(pid)
        raise LookupError(f"container {container} of {namespace}/{pod} ({cid[:12]}) has no running task")

    def _advertise(self, resources: dict[str, str]) -> None:
        """Extended resources (the GPUs the chart requests) in the nodes' capacity, as a device plugin would
        report them; the kubelet keeps capacity it does not manage itself."""
        from kubernetes import client
        core = client.CoreV1Api(self.cluster.api)
        for node in self.nodes:
            core.patch_node_status(node.name, {"status": {"capacity": resources}})


def _which(tool: str) -> bool:
    return any(os.access(Path(d) / tool, os.X_OK) for d in SYSTEM_PATH.split(":"))


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)


def _hierarchies() -> list[Path]:
    return [p for p in CGROUP.iterdir() if (p / "cgroup.procs").exists() and p.name != "unified"]


def _make_cgroup(root: str) -> None:
    """The node's cgroup root in every v1 hierarchy (cpuset needs its cpus and mems filled in)."""
    for h in _hierarchies():
        d = h / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def _remove_cgroup(root: str) -> None:
    for h in _hierarchies():
        top = h / root.lstrip("/")
        if top.exists():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                with contextlib.suppress(OSError):
                    d.rmdir()


def cgroup_pids(root: str) -> list[int]:
    pids: set[int] = set()
    top = CGROUP / "pids" / root.lstrip("/")
    if top.exists():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    return sorted(pids)


def _shims_under(marker: str) -> list[int]:
    """containerd shims whose containerd socket path contains ``marker`` (a node's directory)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if argv[0].endswith(SHIM) and "-address" in argv and marker in argv[argv.index("-address") + 1]:
                    found.append(int(p.name))
    return found


def _kill_node(node_id: str) -> None:
    """SIGKILL every process in the node's cgroups, and its shims, until none is left (a few rounds)."""
    for _ in range(5):
        found = cgroup_pids(f"/{node_id}") + _shims_under(f"/{node_id}/")
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _unmount_under(marker: str) -> None:
    """Lazily unmount every mount whose path contains ``marker`` (a node's directory), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if marker in m), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def remove_stale() -> None:
    """What a killed run left behind, found by its node ids (``lr<pid>n<k>``) whose owner is dead: the
    processes in their cgroups, their shims (re-parented to init, they outlive containerd), their
    mounts, cgroups and bridges."""
    ids = {d.name for h in _hierarchies() for d in h.glob(f"{PREFIX}*n*")}
    ids |= set(re.findall(rf"^\d+: ({PREFIX}\d+n\d+)[:@]", sh("ip", "-o", "link", "show", "type", "bridge"), re.M))
    stale = {i for i in ids if re.fullmatch(rf"{PREFIX}\d+n\d+", i)
             and not Path(f"/proc/{i[len(PREFIX):].split('n')[0]}").exists()}
    if not stale:
        return
    for node_id in stale:
        _kill_node(node_id)
        _unmount_under(f"/{node_id}/")
        _remove_cgroup(f"/{node_id}")
        subprocess.run(["ip", "link", "del", node_id], capture_output=True)
