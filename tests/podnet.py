"""Several Kubernetes-like "pods" on one machine, for integration tests.

A pod is a sandbox of ``cluster/sandbox.py`` (its own network, UTS and
mount namespace on a bridge; the one implementation the control plane's node
sandboxes use too) whose /etc/hosts lists every pod of the network. Commands
enter a pod with ``nsenter -t <pid> -n -u -m`` (``Pod.exec_argv``), and Open
MPI reaches remote pods through ``tests/agents/pod-rsh`` (``AGENT``), which
finds the sandboxes through ``PODNET_DIR`` (``PodNetwork.env()``).

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
State lives in ``/tmp/sandboxes/<tag>/``; a later ``PodNetwork`` removes the
objects of a run whose owning process is gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cluster.sandbox import STATE_ROOT, Network, Sandbox, processes_in_namespaces

__all__ = ["AGENT", "STATE_ROOT", "Pod", "PodNetwork", "processes_in_namespaces"]

AGENT = Path(__file__).resolve().parent / "agents" / "pod-rsh"
SUPERNET = "10.231.0.0/16"
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

Pod = Sandbox


class PodNetwork:
    """A bridge plus pods; a context manager that removes everything on exit."""

    def __init__(self, prefix: str = "pn") -> None:
        self.prefix = prefix
        self.pods: dict[str, Pod] = {}
        self.network: Network | None = None

    @property
    def net(self) -> Network:
        assert self.network is not None, "PodNetwork is not open"
        return self.network

    @property
    def tag(self) -> str:
        return self.net.name

    @property
    def dir(self) -> Path:
        return self.net.dir

    @property
    def host_address(self) -> str:
        return self.net.gateway

    def env(self) -> dict[str, str]:
        """Environment that lets AGENT find this network's pods."""
        return {"PODNET_DIR": str(self.dir)}

    def __enter__(self) -> PodNetwork:
        self.network = Network(self.prefix, SUPERNET)
        (self.dir / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add_pod(self, name: str, env: Mapping[str, str] | None = None) -> Pod:
        """A new pod; ``env`` is the pod's own environment (e.g. the GPUs it was given),
        applied to everything started in it, by ``Pod.exec_argv`` and by the agent."""
        if not _POD_NAME.fullmatch(name) or name in self.pods:
            raise ValueError(f"pod name {name!r} must be a new DNS label (lowercase letters, digits, '-')")
        pod = self.net.add(name, self.dir / "hosts", env)
        self.pods[name] = pod
        with open(self.dir / "hosts", "a") as hosts:  # in place: every sandbox bind-mounts this inode
            hosts.write(f"{pod.ip} {name}\n")
        if pod.env:
            (self.dir / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in pod.env))
        (self.dir / f"{name}.pid").write_text(f"{pod.pid}\n")
        return pod

    def close(self) -> None:
        """Kill every process in every pod, delete links and state; safe to call twice."""
        if self.network is not None:
            self.network.close()
            self.pods.clear()
