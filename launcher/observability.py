"""Health endpoints and Prometheus metrics, shared by the leader and the worker.

``/healthz`` (liveness) and ``/readyz`` (readiness) answer from callbacks the
role supplies; ``/metrics`` serves a registry private to this process so tests
can run several roles side by side.

``prometheus_client`` and the server are imported when metrics or the
server are first made, not with this module: a launch with static hosts
starts mpirun first and serves health right after, sparing their import
time (about 80 ms of the launcher's start with the supervisor's psutil).
"""

from __future__ import annotations

import enum
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from . import __version__
from .errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .probeserver import Respond

PREFIX = "launcher"


class LeaderPhase(str, enum.Enum):
    CONFIG = "config"
    DISCOVERY = "discovery"
    READINESS = "readiness"
    PREFLIGHT = "preflight"
    LAUNCH = "launch"
    SERVING = "serving"
    STOPPING = "stopping"
    EXITED = "exited"


class WorkerState(str, enum.Enum):
    WAITING = "waiting"  # no rank seen yet
    RANKED = "ranked"  # MPI ranks running in this pod
    LOST = "lost"  # a rank or its daemon died; for good


P = TypeVar("P", LeaderPhase, WorkerState)


class PhaseTracker(Generic[P]):
    """Current phase (the first member of ``phases`` at start) as a one-hot gauge, and seconds spent
    in each finished phase."""

    def __init__(self, registry: CollectorRegistry, phases: type[P], name: str = "phase") -> None:
        from prometheus_client import Gauge

        self.phases: type[P] = phases
        self._current = Gauge(f"{PREFIX}_{name}", f"1 for the current {name}", [name], registry=registry)
        self._seconds = Gauge(
            f"{PREFIX}_{name}_duration_seconds", f"Seconds spent in each {name}", [name], registry=registry
        )
        self.current: P = next(iter(phases))
        self._since = time.monotonic()
        self.durations: dict[P, float] = {}
        self._lock = threading.Lock()
        self._show()

    def enter(self, phase: P) -> float:
        """Move to ``phase``; return the seconds spent in the previous one."""
        with self._lock:
            now = time.monotonic()
            spent = now - self._since
            self.durations[self.current] = self.durations.get(self.current, 0.0) + spent
            self._seconds.labels(self.current.value).set(self.durations[self.current])
            self.current, self._since = phase, now
            self._show()
            return spent

    def _show(self) -> None:
        for phase in self.phases:
            self._current.labels(phase.value).set(1 if phase == self.current else 0)


def build_info(registry: CollectorRegistry, role: str) -> None:
    from prometheus_client import Gauge

    info = Gauge(f"{PREFIX}_build_info", "Launcher version and role", ["version", "role"], registry=registry)
    info.labels(__version__, role).set(1)


class LeaderMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        build_info(self.registry, "leader")
        self.phases = PhaseTracker(self.registry, LeaderPhase)
        self.ranks_expected = Gauge(f"{PREFIX}_ranks_expected", "Ranks in the launch", registry=self.registry)
        self.ranks_alive = Gauge(
            f"{PREFIX}_ranks_alive", "Ranks alive (local ranks seen, remote ones while mpirun runs)",
            registry=self.registry,
        )
        self.mpirun_exit_code = Gauge(
            f"{PREFIX}_mpirun_exit_code", "mpirun's exit status (-1 while running or never started)",
            registry=self.registry,
        )
        self.mpirun_exit_code.set(-1)
        self.time_to_ready = Gauge(
            f"{PREFIX}_time_to_ready_seconds", "Seconds from mpirun start to rank 0 ready", registry=self.registry
        )
        self.rank0_ready = Gauge(f"{PREFIX}_rank0_ready", "1 while Triton rank 0 is ready", registry=self.registry)
        self.preflight_passed = Gauge(f"{PREFIX}_preflight_passed", "1 if the last preflight passed, 0 if it failed",
                                      registry=self.registry)
        self.failed = Gauge(f"{PREFIX}_failed", "1 once the launch failed: its exit code and phase",
                            ["exit_code", "phase"], registry=self.registry)
        self.preflight_busbw = Gauge(
            f"{PREFIX}_preflight_busbw_bytes_per_second", "Preflight allreduce bus bandwidth at the largest size",
            ["transport"], registry=self.registry,
        )


Check = Callable[[], tuple[bool, str]]


def reserve_port(port: int, host: str = "0.0.0.0") -> socket.socket:
    """A socket bound to the health port (not yet listening): a port in use fails here, before a launch
    starts anything, even when the server itself starts later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--health-port={port}: {exc.strerror}; choose a free port") from exc
    return sock


class HealthServer:
    """/healthz, /readyz and /metrics on one thread (``probeserver``: bounded connections and time)."""

    def __init__(self, port: int | socket.socket, registry: CollectorRegistry, live: Check, ready: Check,
                 host: str = "0.0.0.0", timeout_s: float = 5.0, max_connections: int = 128) -> None:
        """``port``: a port to bind, or a socket ``reserve_port`` bound earlier."""
        from .probeserver import ProbeServer

        bound = port if isinstance(port, socket.socket) else reserve_port(port, host)
        self.server = ProbeServer(bound, _responder(registry, live, ready), timeout_s=timeout_s,
                                  max_connections=max_connections)
        self.port = int(bound.getsockname()[1])
        self._thread = threading.Thread(target=self.server.serve, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.stop()
            self._thread.join(5)
        self.server.close()


def _responder(registry: CollectorRegistry, live: Check, ready: Check) -> Respond:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def respond(path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(registry), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            ok, detail = (live if path == "/healthz" else ready)()
            return 200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8"
        return 404, b"not found\n", "text/plain; charset=utf-8"

    return respond
