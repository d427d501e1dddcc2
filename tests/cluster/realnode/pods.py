"""What the real-node tests look at from the host: a container's processes, zombies, leftovers,
and the exit codes the kubelet reported for containers of pods that are gone since."""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
from kubernetes import client, watch

from cluster.realnode import RealNodes, cgroup_pids


@dataclass(frozen=True)
class Proc:
    pid: int  # as the host sees it
    name: str
    status: str
    ppid: int


def container_processes(pid1: int) -> list[Proc]:
    """Every process in the PID namespace of the container whose PID 1 is ``pid1`` (host PID)."""
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    found = []
    for proc in psutil.process_iter(["name", "status", "ppid"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.readlink(f"/proc/{proc.pid}/ns/pid") == ns:
                found.append(Proc(proc.pid, proc.info["name"], proc.info["status"], proc.info["ppid"]))
    return found


def zombies(pid1: int) -> list[Proc]:
    return [p for p in container_processes(pid1) if p.status == psutil.STATUS_ZOMBIE]


def lasting_zombies(pid1: int, samples: int = 3, interval_s: float = 0.5) -> list[Proc]:
    """Zombies seen in every one of ``samples`` looks (a process is a zombie for an instant before its
    parent reaps it; one that stays is never reaped)."""
    seen: set[Proc] | None = None
    for i in range(samples):
        if i:
            threading.Event().wait(interval_s)
        try:
            now = set(zombies(pid1))
        except FileNotFoundError:  # the container is gone: nothing of it lingers
            return []
        seen = now if seen is None else seen & now
    return sorted(seen or set(), key=lambda p: p.pid)


POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_of(pid: int) -> str | None:
    """The pod a process runs in, from its cgroup path (kubepods/<qos>/pod<uid>/<container>)."""
    with contextlib.suppress(OSError):
        match = POD_UID.search(Path(f"/proc/{pid}/cgroup").read_text())
        if match:
            return match.group(1).replace("_", "-")
    return None


def leftovers(nodes: RealNodes, live_uids: set[str]) -> list[tuple[int, str, str | None]]:
    """Processes on the real nodes that belong to no pod in ``live_uids``: (pid, name, pod uid)."""
    found = []
    for node in nodes.nodes:
        for pid in cgroup_pids(node.cgroup_root):
            uid = pod_uid_of(pid)
            if uid not in live_uids:
                with contextlib.suppress(psutil.Error):
                    found.append((pid, psutil.Process(pid).name(), uid))
    return found


@dataclass(frozen=True)
class Ended:
    pod: str
    uid: str
    container: str
    exit_code: int
    reason: str
    finished: float  # epoch seconds
    message: str  # the termination message: the log's tail when the container failed


class ExitRecorder:
    """Watches a namespace's pods and keeps every container termination the kubelet reports
    (current and last state), so a test can read the exit code of a pod that LWS deleted since."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.ended: set[Ended] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"exits-{namespace}")
        self._thread.start()

    def _run(self) -> None:
        core = client.CoreV1Api(self.api)
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for event in watch.Watch().stream(core.list_namespaced_pod, self.namespace, timeout_seconds=2):
                    self._record(event["object"])

    def _record(self, pod: client.V1Pod) -> None:
        for status in pod.status.container_statuses or []:
            for state in (status.state, status.last_state):
                done = state.terminated if state else None
                if done is not None:
                    self.ended.add(Ended(pod.metadata.name, pod.metadata.uid, status.name, done.exit_code,
                                         done.reason or "", done.finished_at.timestamp() if done.finished_at else 0,
                                         done.message or ""))

    def of(self, uid: str) -> list[Ended]:
        return sorted((e for e in self.ended if e.uid == uid), key=lambda e: e.finished)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
