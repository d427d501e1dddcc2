"""A real Kubernetes control plane for tests, from the binaries cluster/build.sh caches.

etcd, kube-apiserver (RBAC,Node), kube-controller-manager and kube-scheduler run
in the host network namespace; the LWS controller runs as a local process whose
webhooks are registered with ``url: https://127.0.0.1:<port>/...``; each node is
a pod sandbox (see sandbox.py) running its own kwok, which marks that node's pods
Running and serves ``exec`` by running the command inside the sandbox.

A pod's IP is its node sandbox's address (the kwok pod-ready stage is patched to
report the node IP), and nodes hold one pod each by default, so every pod has
its own hostname, network and /dev/shm, and what an exec starts listens on the
pod IP. The apiserver listens on the bridge address so sandboxes reach it.
"""
from __future__ import annotations

import base64
import contextlib
import importlib
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .sandbox import Network, Sandbox, pdeathsig

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CLUSTER_CACHE", ROOT / ".cache" / "cluster"))
BIN, SHARE = CACHE / "bin", CACHE / "share"
KUBELET_PORT = 10250
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
SANDBOX_READY = "kube-cluster.test/sandbox-ready"  # set once a pod's sandbox is set up; kwok waits for it
FRONT_PROXY = "front-proxy-client"  # the apiserver's identity towards aggregated API servers
KEDA_NAMESPACE, KEDA_ADAPTER = "keda", "keda-metrics-apiserver"  # the adapter's Service, as KEDA's manifests name it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, procs: Sequence[Proc] = ()) -> Any:
    """Poll ``check`` until it returns a truthy value; fail early if one of ``procs`` died."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - polled conditions fail until they pass
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r})")


def _strip_descriptions(schema: Any) -> Any:
    """Drop the doc strings of a CRD schema (4/5 of its 1.5 MB): the apiserver builds OpenAPI faster."""
    if isinstance(schema, dict):
        return {k: _strip_descriptions(v) for k, v in schema.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_strip_descriptions(v) for v in schema]
    return schema


class Proc:
    """A child process logging to ``<logdir>/<name>.log``, killed if the test run dies."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, logdir / f"{name}.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env, preexec_fn=pdeathsig)

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; log tail:\n{tail}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (at once if 0)."""
        if self.popen.poll() is None and timeout > 0:
            self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Node:
    name: str
    sandbox: Sandbox
    kwok: Proc | None = None

    @property
    def ip(self) -> str:
        return self.sandbox.ip


@dataclass
class Cluster:
    """Start with ``start()`` (or ``with Cluster(...) as c``); ``stop()`` removes everything."""

    workdir: Path
    nodes_count: int = 2
    pods_per_node: int = 1
    node_resources: dict[str, str] = field(
        default_factory=lambda: {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"})
    path: str = SYSTEM_PATH  # PATH of exec'd commands and of popen_in_pod ("what the image has")
    exec_env: dict[str, str] = field(default_factory=dict)  # extra env of every exec'd command
    nodes: list[Node] = field(default_factory=list, init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.logs = self.workdir / "logs"
        self.procs: list[Proc] = []
        self.network: Network | None = None
        self.api: Any = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.keda: list[Proc] = []  # KEDA's operator and adapter, once start_keda ran

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                               "lws-controller", "kwok") if not (BIN / b).exists()]
        if missing:
            raise FileNotFoundError(f"missing {missing} in {BIN}: run cluster/build.sh first")
        t0 = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._mark("total", t0)
        return self

    def _mark(self, phase: str, t0: float) -> None:
        self.timings[phase] = round(time.monotonic() - t0, 2)

    def _start(self) -> None:
        t0 = time.monotonic()
        # importing the client takes ~1 s: let it overlap the apiserver's start
        threading.Thread(target=importlib.import_module, args=("kubernetes.config",), daemon=True).start()
        self.network = Network()
        (self.workdir / "sandboxes").mkdir(exist_ok=True)
        for i in range(self.nodes_count):
            name = f"node-{i}"  # each node its own /etc/hosts: set_hostname gives it the pod's name
            self.nodes.append(Node(name, self.network.add(name, self.workdir / "sandboxes" / f"{name}.hosts")))
        self.server_ip = self.network.gateway
        self._pki()
        self._mark("sandboxes+pki", t0)
        self._start_etcd()
        self._start_apiserver()
        self._mark("apiserver ready", t0)
        self._client()
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._start_component(name)
        # processes are started from this thread only: PR_SET_PDEATHSIG fires when the starting thread ends
        with ThreadPoolExecutor(1) as pool:
            crds = pool.submit(self._install_crds)
            self._start_nodes()
            crds.result()
        self._register_webhooks(self._start_lws())
        self._watcher = threading.Thread(target=self._sandbox_setup, name="sandbox-setup", daemon=True)
        self._watcher.start()
        self._mark("components started", t0)
        self._wait_ready()
        self._mark("ready", t0)

    def stop(self) -> None:
        self._stopping.set()
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.network:
            self.network.close()
            self.network = None

    # ---------------------------------------------------------------- pieces
    def _pki(self) -> None:
        from . import pki  # needs `cryptography`: imported late so that collecting tests works without it
        d = self.workdir / "pki"
        self.ca = pki.CA(d)
        self.ca_path = self.ca.cert_path
        hosts = (self.server_ip, "127.0.0.1", "10.96.0.1", "localhost", "kubernetes", "kubernetes.default",
                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
        self.apiserver_cert = self.ca.issue("apiserver", "kube-apiserver", hosts=hosts, server=True)
        self.kubelet_client = self.ca.issue("apiserver-kubelet", "kube-apiserver-kubelet-client",
                                            orgs=("system:masters",), client=True)
        self.admin_cert = self.ca.issue("admin", "admin", orgs=("system:masters",), client=True)
        self.front_proxy_cert = self.ca.issue("front-proxy-client", FRONT_PROXY, client=True)
        self.webhook_dir = self.workdir / "lws-certs"
        self.webhook_dir.mkdir()
        crt, key = self.ca.issue("lws-webhook", "lws-webhook", hosts=("127.0.0.1",), server=True)
        crt.rename(self.webhook_dir / "tls.crt")
        key.rename(self.webhook_dir / "tls.key")
        for node in self.nodes:
            self.ca.issue(node.name, node.name, hosts=(node.ip, node.name), server=True)
        self.sa_key, self.sa_pub = pki.signing_key(d / "sa.key")

    def _start_etcd(self) -> None:
        port, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{port}"
        etcd = self._proc("etcd", [
            str(BIN / "etcd"), "--name=test", f"--data-dir={self.workdir / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}", "--log-level=warn",
            "--quota-backend-bytes=2147483648"])
        wait_for("etcd", lambda: b"true" in urllib.request.urlopen(f"{self.etcd_url}/health", timeout=1).read(),
                 30, [etcd])

    def _start_apiserver(self) -> None:
        self.api_port = free_port()
        self.server = f"https://{self.server_ip}:{self.api_port}"
        crt, key = self.apiserver_cert
        kcrt, kkey = self.kubelet_client
        pcrt, pkey = self.front_proxy_cert
        api = self._proc("kube-apiserver", [
            str(BIN / "kube-apiserver"), f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.server_ip}", f"--advertise-address={self.server_ip}",
            f"--secure-port={self.api_port}", f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
            f"--client-ca-file={self.ca_path}", "--authorization-mode=RBAC,Node",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.sa_pub}", f"--service-account-signing-key-file={self.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP", f"--kubelet-certificate-authority={self.ca_path}",
            f"--kubelet-client-certificate={kcrt}", f"--kubelet-client-key={kkey}",
            # the aggregation layer (KEDA's metrics adapter): the apiserver proxies as FRONT_PROXY and,
            # with no kube-proxy on the host, to the EndpointSlice's address rather than the ClusterIP
            f"--requestheader-client-ca-file={self.ca_path}", f"--requestheader-allowed-names={FRONT_PROXY}",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-", f"--proxy-client-cert-file={pcrt}",
            f"--proxy-client-key-file={pkey}", "--enable-aggregator-routing=true",
            f"--cert-dir={self.workdir / 'apiserver'}", "--profiling=false", "--v=1"])
        self.kubeconfig = self._write_kubeconfig("admin", *self.admin_cert)
        self._wait_apiserver(api)

    def _wait_apiserver(self, api: Proc) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        wait_for("kube-apiserver /readyz", lambda: urllib.request.urlopen(
            f"{self.server}/readyz", context=ctx, timeout=2).status == 200, 90, [api])

    def _write_kubeconfig(self, user: str, crt: Path, key: Path) -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.server,
                                                     "certificate-authority": str(self.ca_path)}}],
            "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        }
        path = self.workdir / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def _client(self) -> None:
        from kubernetes import config
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))

    def _install_crds(self, project: str = "lws") -> None:
        """The CRDs build.sh copied to share/<project>-crds, once established."""
        from kubernetes import client
        ext = client.ApiextensionsV1Api(self.api)
        names = []
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on these 1.5 MB files
        for f in sorted((SHARE / f"{project}-crds").glob("*.yaml")):
            crd = _strip_descriptions(yaml.load(f.read_text(), Loader=loader))
            ext.create_custom_resource_definition(crd)
            names.append(crd["metadata"]["name"])

        def established() -> bool:
            return all(any(c.type == "Established" and c.status == "True"
                           for c in (ext.read_custom_resource_definition(n).status.conditions or []))
                       for n in names)
        wait_for(f"{project} CRDs established", established, 30)

    def _start_component(self, name: str) -> Proc:
        # the scheduler at 2 logs why a pod did not fit: what a test that waits for a group needs to know
        verbosity = 2 if name == "kube-scheduler" else 1
        argv = [str(BIN / name), f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0",
                f"--v={verbosity}"]
        if name == "kube-controller-manager":
            argv += [f"--service-account-private-key-file={self.sa_key}", f"--root-ca-file={self.ca_path}",
                     "--controllers=*", "--cluster-name=test",
                     "--horizontal-pod-autoscaler-sync-period=2s"]  # an autoscaling test waits for its decisions
        return self._proc(name, argv)

    def _start_lws(self) -> tuple[Proc, int]:
        port, health = free_port(), free_port()
        conf = self.workdir / "lws-config.yaml"
        conf.write_text(yaml.safe_dump({
            "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(self.webhook_dir)},
            "metrics": {"bindAddress": "0"}, "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        }))
        env = {"PATH": SYSTEM_PATH, "HOME": str(self.workdir), "KUBECONFIG": str(self.kubeconfig)}
        proc = self._proc("lws-controller", [str(BIN / "lws-controller"), f"--config={conf}",
                                             "--zap-log-level=info"], env=env)
        return proc, port

    def _kwok_config(self) -> list[Path]:
        d = self.workdir / "kwok"
        d.mkdir()
        files = []
        for f in sorted((SHARE / "kwok-stages").glob("*.yaml")):
            text = f.read_text()
            if f.name == "pod-ready.yaml":
                # a pod's IP is its node's (sandbox) address, and it turns Running only after
                # the sandbox has the pod's hostname (see _sandbox_setup)
                old = ("{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false )"
                       " ( or .metadata.uid \"\" )"
                       " ( or .metadata.name \"\" ) ( or .metadata.namespace \"\" ) }}")
                if old not in text:
                    raise RuntimeError(f"{f}: kwok's pod-ready stage changed; update the pod IP patch")
                stage = yaml.safe_load(text.replace(old, "{{ $podIPs := NodeIPsWith .spec.nodeName }}"))
                stage["spec"]["selector"]["matchAnnotations"] = {SANDBOX_READY: "true"}
                text = yaml.safe_dump(stage)
            (d / f.name).write_text(text)
            files.append(d / f.name)
        exec_conf = d / "cluster-exec.yaml"
        exec_conf.write_text(yaml.safe_dump({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterExec", "metadata": {"name": "local"},
            "spec": {"execs": [{"local": {"workDir": "/"}}]}}))
        return files + [exec_conf]

    def _start_nodes(self) -> None:
        from kubernetes import client
        core = client.CoreV1Api(self.api)
        resources = {**self.node_resources, "pods": str(self.pods_per_node)}
        for node in self.nodes:
            core.create_node({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name, "type": "kwok"},
                             "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "status": {"capacity": resources, "allocatable": resources,
                           "addresses": [{"type": "InternalIP", "address": node.ip},
                                         {"type": "Hostname", "address": node.name}]}})
        configs = [f"--config={p}" for p in self._kwok_config()]
        env = {"PATH": self.path, "HOME": "/root", **self.exec_env}
        for node in self.nodes:
            crt, key = (self.ca.dir / f"{node.name}.crt"), (self.ca.dir / f"{node.name}.key")
            argv = node.sandbox.command([
                str(BIN / "kwok"), f"--kubeconfig={self.kubeconfig}", f"--manage-single-node={node.name}",
                f"--node-ip={node.ip}", f"--node-name={node.name}", f"--node-port={KUBELET_PORT}",
                f"--server-address={node.ip}:{KUBELET_PORT}", f"--tls-cert-file={crt}",
                f"--tls-private-key-file={key}", "--node-lease-duration-seconds=40", *configs])
            node.kwok = self._proc(f"kwok-{node.name}", argv, env=env)

    def _register_webhooks(self, lws: tuple[Proc, int]) -> None:
        # the pod webhook only for LWS's pods, as LWS's own kustomize patch does
        self._webhooks("lws", lws, lambda hook: {"objectSelector": {"matchExpressions": [
            {"key": NAME_LABEL, "operator": "Exists"}]}} if any(r["resources"] == ["pods"] for r in hook["rules"])
            else {})

    def _webhooks(self, project: str, server: tuple[Proc, int],
                  adjust: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Register share/<project>-webhooks.yaml with ``url: https://127.0.0.1:<port><path>`` once the
        server answers TLS; ``adjust(hook)`` returns fields to set on a hook, or None to leave it out."""
        from kubernetes import client
        proc, port = server
        ctx = ssl.create_default_context(cafile=str(self.ca_path))

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    return True
        wait_for(f"{project} webhook server", listening, 60, [proc])
        ca = base64.b64encode(self.ca.pem).decode()
        adm = client.AdmissionregistrationV1Api(self.api)
        for m in yaml.safe_load_all((SHARE / f"{project}-webhooks.yaml").read_text()):
            m["metadata"]["name"] = f"{project}-" + m["metadata"]["name"]
            hooks = []
            for hook in m["webhooks"]:
                extra = adjust(hook)
                if extra is None:
                    continue
                path = hook["clientConfig"]["service"]["path"]
                hooks.append({**hook, **extra, "clientConfig": {"url": f"https://127.0.0.1:{port}{path}",
                                                                "caBundle": ca}})
            m["webhooks"] = hooks
            if m["kind"] == "MutatingWebhookConfiguration":
                adm.create_mutating_webhook_configuration(m)
            else:
                adm.create_validating_webhook_configuration(m)

    def start_kueue(self) -> Proc:
        """Kueue's CRDs, its controller (the LeaderWorkerSet and pod integrations; no certificate
        management, no leader election, no visibility server) and its webhooks; call after start()."""
        self._install_crds("kueue")
        port, health = free_port(), free_port()
        conf = self.workdir / "kueue-config.yaml"
        conf.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": "kube-system",
            "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(self.webhook_dir)},
            "metrics": {"bindAddress": "0"}, "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "integrations": {"frameworks": ["leaderworkerset.x-k8s.io/leaderworkerset", "pod"]},
        }))
        env = {"PATH": SYSTEM_PATH, "HOME": str(self.workdir), "KUBECONFIG": str(self.kubeconfig)}
        # Without its certificate management Kueue reads a metrics certificate from a fixed path,
        # /etc/kueue/metrics/certs: give it one in a mount namespace of its own (a tmpfs there; the
        # directory it mounts over is created empty on this machine if missing).
        certs = "/etc/kueue/metrics/certs"
        setup = (f'mkdir -p /etc/kueue && mount -t tmpfs kueue /etc/kueue && mkdir -p {certs} && '
                 f'cp "$0" "$1" {certs}/ && shift && exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup,
                str(self.webhook_dir / "tls.crt"), str(self.webhook_dir / "tls.key"),
                str(BIN / "kueue"), f"--config={conf}", "--zap-log-level=info",
                "--feature-gates=VisibilityOnDemand=false"]
        proc = self._proc("kueue", argv, env=env)
        wanted = ("leaderworkerset", "--v1-pod", "kueue-x-k8s-io")
        self._webhooks("kueue", (proc, port), lambda hook: {} if any(
            w in hook["clientConfig"]["service"]["path"] for w in wanted) else None)
        return proc

    def start_keda(self) -> list[Proc]:
        """KEDA's CRDs, its operator and its metrics adapter, the adapter serving external.metrics.k8s.io
        through the aggregation layer; certificates from the test CA (KEDA's rotation writes a Secret for
        a kubelet to mount: nothing would). Once per cluster; call after start()."""
        if self.keda:
            return self.keda
        from kubernetes import client
        self._install_crds("keda")
        client.CoreV1Api(self.api).create_namespace({"metadata": {"name": KEDA_NAMESPACE}})
        certs = self.workdir / "keda-certs"
        certs.mkdir()
        # one certificate for both ends of the operator's mutual-TLS gRPC and for the adapter's API
        hosts = ("127.0.0.1", self.server_ip, f"{KEDA_ADAPTER}.{KEDA_NAMESPACE}.svc")
        crt, key = self.ca.issue("keda", "keda", hosts=hosts, server=True, client=True)
        crt.rename(certs / "tls.crt")
        key.rename(certs / "tls.key")
        (certs / "ca.crt").write_bytes(self.ca.pem)
        grpc, health, secure, metrics = free_port(), free_port(), free_port(), free_port()
        env = {"PATH": SYSTEM_PATH, "HOME": str(self.workdir), "KUBECONFIG": str(self.kubeconfig),
               "WATCH_NAMESPACE": "", "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE, "POD_NAMESPACE": KEDA_NAMESPACE}
        self.keda.append(self._proc("keda-operator", [
            str(BIN / "keda-operator"), "--leader-elect=false", "--enable-cert-rotation=false",
            "--enable-apiservice-patching=false", "--enable-webhook-patching=false", "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{health}", f"--metrics-service-bind-address=127.0.0.1:{grpc}",
            f"--cert-dir={certs}", "--zap-log-level=info"], env=env))
        kubeconfig = str(self.kubeconfig)
        self.keda.append(self._proc("keda-adapter", [
            str(BIN / "keda-adapter"), f"--bind-address={self.server_ip}", f"--secure-port={secure}",
            f"--cert-dir={certs}", f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            f"--lister-kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", f"--metrics-service-address=127.0.0.1:{grpc}",
            f"--port={metrics}", "--zap-log-level=info"], env=env))
        self._register_api_service("external.metrics.k8s.io", "v1beta1", secure)
        return self.keda

    def _register_api_service(self, group: str, version: str, port: int) -> None:
        """The adapter listening on the bridge address as ``version.group``: a Service without a
        selector, its EndpointSlice (no loopback address is allowed there), the APIService; once Available."""
        from kubernetes import client
        core = client.CoreV1Api(self.api)
        core.create_namespaced_service(KEDA_NAMESPACE, {"metadata": {"name": KEDA_ADAPTER}, "spec": {
            "ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}})
        client.DiscoveryV1Api(self.api).create_namespaced_endpoint_slice(KEDA_NAMESPACE, {
            "metadata": {"name": KEDA_ADAPTER, "labels": {"kubernetes.io/service-name": KEDA_ADAPTER}},
            "addressType": "IPv4", "endpoints": [{"addresses": [self.server_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        registration = client.ApiregistrationV1Api(self.api)
        name = f"{version}.{group}"
        registration.create_api_service({"metadata": {"name": name}, "spec": {
            "group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
            "service": {"name": KEDA_ADAPTER, "namespace": KEDA_NAMESPACE, "port": 443},
            "caBundle": base64.b64encode(self.ca.pem).decode()}})

        def available() -> bool:
            conditions = registration.read_api_service(name).status.conditions or []
            return any(c.type == "Available" and c.status == "True" for c in conditions)
        wait_for(f"APIService {name} Available", available, 120, self.keda)

    def _wait_ready(self) -> None:
        from kubernetes import client
        core = client.CoreV1Api(self.api)

        def nodes_ready() -> bool:
            items = core.list_node().items
            return len(items) == len(self.nodes) and all(
                any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])) for n in items)
        wait_for("kwok nodes Ready", nodes_ready, 60, self.procs)
        wait_for("default ServiceAccount (kube-controller-manager)",
                 lambda: core.read_namespaced_service_account("default", "default"), 60, self.procs)

    def _sandbox_setup(self) -> None:
        """The kubelet's part that kwok lacks: when a pod lands on a node, give the node's sandbox
        the pod's hostname and /etc/hosts entry, then mark the pod so kwok reports it Running.
        (Own ApiClient: kubernetes.stream swaps the request method of the client it is given.)"""
        from kubernetes import client, config, watch
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api)
        failing = False
        while not self._stopping.is_set():
            try:
                for ev in watch.Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=5):
                    pod = ev["object"]
                    if (ev["type"] == "DELETED" or not pod.spec.node_name or pod.metadata.deletion_timestamp
                            or (pod.metadata.annotations or {}).get(SANDBOX_READY)
                            or not any(n.name == pod.spec.node_name for n in self.nodes)):  # a real node's pod
                        continue
                    if self.pods_per_node == 1:
                        hostname = pod.spec.hostname or pod.metadata.name
                        fqdn = f"{hostname}.{pod.spec.subdomain}.{pod.metadata.namespace}.svc.cluster.local" \
                            if pod.spec.subdomain else ""
                        self.node(pod.spec.node_name).sandbox.set_hostname(hostname, fqdn)
                    try:
                        core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                  {"metadata": {"annotations": {SANDBOX_READY: "true"}}})
                    except client.ApiException as e:
                        if e.status != 404:  # a pod deleted meanwhile needs nothing
                            raise
                failing = False
            except Exception as e:  # noqa: BLE001 - keep serving; the apiserver may be restarting
                if not self._stopping.is_set():
                    if not failing:
                        print(f"sandbox-setup: {e!r}; retrying", file=sys.stderr)
                    failing = True
                    time.sleep(0.2)
        api.close()

    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.logs, env)
        self.procs.append(proc)
        return proc

    # ---------------------------------------------------------------- helpers for tests
    def check(self) -> None:
        """Raise if any component has died."""
        for p in self.procs:
            p.check()
        if self._watcher is not None and not self._watcher.is_alive():
            raise RuntimeError("the sandbox-setup thread has died")

    def restart(self, name: str, down_s: float = 0.0, graceful: bool = False) -> None:
        """Kill (SIGKILL, or SIGTERM if ``graceful``) a component ("kube-apiserver", "lws-controller",
        "kwok-node-1", ...), wait ``down_s``, start it again with the same flags (the apiserver: until
        /readyz answers). A gracefully stopped kube-apiserver may take 10 s to exit."""
        proc = next(p for p in self.procs if p.name == name)
        proc.stop(timeout=10 if graceful else 0)
        time.sleep(down_s)
        proc.start()
        if name == "kube-apiserver":
            self._wait_apiserver(proc)

    def create_namespace(self, prefix: str = "test") -> str:
        """A fresh namespace whose ``default`` ServiceAccount exists (so pods can be created)."""
        from kubernetes import client
        core = client.CoreV1Api(self.api)
        name = f"{prefix}-{secrets.token_hex(3)}"
        core.create_namespace({"metadata": {"name": name}})
        wait_for(f"ServiceAccount default in {name}",
                 lambda: core.read_namespaced_service_account("default", name), 30, self.procs)
        return name

    def delete_namespace(self, name: str, timeout: float = 30) -> None:
        """Delete a namespace and, at once, its pods (so their nodes are free for the next test)."""
        from kubernetes import client
        core = client.CoreV1Api(self.api)
        core.delete_namespace(name)  # a terminating namespace admits no new pods
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        wait_for(f"pods of {name} to go", lambda: not core.list_namespaced_pod(name).items, timeout, self.procs)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def sandbox_of(self, namespace: str, pod: str) -> Sandbox:
        """The sandbox a (scheduled) pod runs in."""
        from kubernetes import client
        p = client.CoreV1Api(self.api).read_namespaced_pod(pod, namespace)
        if not p.spec.node_name:
            raise RuntimeError(f"pod {namespace}/{pod} is not scheduled")
        return self.node(p.spec.node_name).sandbox

    def pod_env(self, namespace: str, pod: str, container: int = 0) -> dict[str, str]:
        """The environment a container of ``pod`` would get from a kubelet: its ``env`` (values and the
        common fieldRefs) plus KUBERNETES_SERVICE_HOST/PORT pointing at this apiserver."""
        from kubernetes import client
        p = client.CoreV1Api(self.api).read_namespaced_pod(pod, namespace)
        fields = {"metadata.name": p.metadata.name, "metadata.namespace": p.metadata.namespace,
                  "metadata.uid": p.metadata.uid, "spec.nodeName": p.spec.node_name,
                  "spec.serviceAccountName": p.spec.service_account_name,
                  "status.podIP": p.status.pod_ip, "status.hostIP": p.status.host_ip}
        env = {"PATH": self.path, "HOME": "/root", "HOSTNAME": p.spec.hostname or p.metadata.name,
               "KUBERNETES_SERVICE_HOST": self.server_ip, "KUBERNETES_SERVICE_PORT": str(self.api_port),
               # kwok runs an exec'd command in its own environment, not the pod's: no LAUNCHER_POD_UID
               # there for kubessh to check inside the exec (it still checks the uid it reads first)
               "KUBESSH_CHECK_UID_IN_EXEC": "no"}
        for e in p.spec.containers[container].env or []:
            if e.value_from is None:
                env[e.name] = e.value or ""
            elif e.value_from.field_ref is not None:
                path = e.value_from.field_ref.field_path
                if path.startswith(("metadata.labels['", "metadata.annotations['")):
                    src = p.metadata.labels if path.startswith("metadata.labels") else p.metadata.annotations
                    env[e.name] = (src or {}).get(path.split("'")[1], "")
                else:
                    env[e.name] = fields.get(path) or ""
        return env

    def mount_service_account(self, namespace: str, pod: str, expiration_s: int = 3600) -> Path:
        """Write a token bound to ``pod`` (TokenRequest), ca.crt and namespace into the pod sandbox's
        /var/run/secrets/kubernetes.io/serviceaccount, as a kubelet would; returns that host path."""
        from kubernetes import client
        core = client.CoreV1Api(self.api)
        p = core.read_namespaced_pod(pod, namespace)
        tr = core.create_namespaced_service_account_token(p.spec.service_account_name or "default", namespace, {
            "spec": {"expirationSeconds": expiration_s,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": p.metadata.uid}}})
        d = self.sandbox_of(namespace, pod).path("/run/secrets/kubernetes.io/serviceaccount")
        (d / "token").write_text(tr.status.token)
        (d / "ca.crt").write_bytes(self.ca.pem)
        (d / "namespace").write_text(namespace)
        return d

    def popen_in_pod(self, namespace: str, pod: str, argv: list[str], env: dict[str, str] | None = None,
                     **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` as the pod's own process: in its sandbox, with ``pod_env`` (+ ``env``) and its
        service-account files mounted. It is killed when the cluster stops, and (PR_SET_PDEATHSIG)
        when the thread that called this ends: call it from a thread that outlives the process."""
        self.mount_service_account(namespace, pod)
        full = {**self.pod_env(namespace, pod), **(env or {})}
        return self.sandbox_of(namespace, pod).run(argv, env=full, **kwargs)
