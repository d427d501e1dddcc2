"""Health endpoints and Prometheus metrics, shared by the leader and the worker.

``/healthz`` (liveness) and ``/readyz`` (readiness) answer from callbacks the
role supplies; ``/metrics`` serves a registry private to this process so tests
can run several roles side by side.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from . import __version__
from .errors import ConfigError

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
    info = Gauge(f"{PREFIX}_build_info", "Launcher version and role", ["version", "role"], registry=registry)
    info.labels(__version__, role).set(1)


Check = Callable[[], tuple[bool, str]]


class HealthServer:
    """A small threaded HTTP server for /healthz, /readyz and /metrics."""

    def __init__(self, port: int, registry: CollectorRegistry, live: Check, ready: Check,
                 host: str = "0.0.0.0") -> None:
        handler = _make_handler(registry, live, ready)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"--health-port={port}: {exc.strerror}; choose a free port") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(registry: CollectorRegistry, live: Check, ready: Check) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, detail = (live if path == "/healthz" else ready)()
                self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: stay quiet
            pass

    return Handler
