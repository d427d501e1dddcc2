"""Health endpoints and metrics over real HTTP."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from launcher.observability import HealthServer, LeaderMetrics, LeaderPhase
from tests.conftest import http_get as get


def test_endpoints_follow_callbacks_and_phases() -> None:
    metrics = LeaderMetrics()
    state = {"ready": False}
    server = HealthServer(0, metrics.registry, lambda: (True, "alive"),
                          lambda: (state["ready"], "ready" if state["ready"] else "not ready"),
                          host="127.0.0.1").start()
    try:
        assert get(server.port, "/healthz") == (200, "alive\n")
        assert get(server.port, "/readyz") == (503, "not ready\n")
        state["ready"] = True
        assert get(server.port, "/readyz") == (200, "ready\n")
        metrics.phases.enter(LeaderPhase.DISCOVERY)
        metrics.phases.enter(LeaderPhase.LAUNCH)
        code, text = get(server.port, "/metrics")
        assert code == 200
        assert 'launcher_phase{phase="launch"} 1.0' in text
        assert 'launcher_phase{phase="discovery"} 0.0' in text
        assert 'launcher_phase_duration_seconds{phase="discovery"}' in text
        assert 'launcher_build_info{role="leader",version="0.1.0"} 1.0' in text
        assert "launcher_mpirun_exit_code -1.0" in text
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_taken_health_port_is_a_config_error() -> None:
    from launcher.errors import ConfigError

    metrics = LeaderMetrics()
    first = HealthServer(0, metrics.registry, lambda: (True, ""), lambda: (True, ""), host="127.0.0.1").start()
    try:
        with pytest.raises(ConfigError, match=rf"--health-port={first.port}: Address already in use; choose"):
            HealthServer(first.port, metrics.registry, lambda: (True, ""), lambda: (True, ""), host="127.0.0.1")
    finally:
        first.stop()


def health_server(**kwargs: float) -> HealthServer:
    return HealthServer(0, LeaderMetrics().registry, lambda: (True, "alive"), lambda: (True, "ready"),
                        host="127.0.0.1", **kwargs).start()  # type: ignore[arg-type]


def enough_descriptors(count: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


def idle_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_health_answers_at_once_with_1500_idle_connections_on_few_threads() -> None:
    enough_descriptors(4000)
    server = health_server()
    idle: list[socket.socket] = []
    try:
        idle = idle_connections(server.port, 1500)
        threads = threading.active_count()
        t0 = time.monotonic()
        assert get(server.port, "/healthz") == (200, "alive\n")
        assert time.monotonic() - t0 < 1.0
        assert threads < 50 and threading.active_count() < 50
        assert server.server.open_connections <= server.server.max_connections
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_slow_request_is_dropped_after_the_timeout() -> None:
    server = health_server(timeout_s=0.5)
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        t0 = time.monotonic()
        slow.sendall(b"GET /hea")
        for _ in range(3):  # trickling bytes does not extend it
            time.sleep(0.1)
            slow.sendall(b"l")
        assert closed_by_server(slow, 3.0)
        assert 0.4 < time.monotonic() - t0 < 2.0
        slow.close()
        assert get(server.port, "/healthz") == (200, "alive\n")
    finally:
        server.stop()


def test_beyond_the_cap_the_oldest_connection_is_closed() -> None:
    server = health_server(max_connections=4)
    try:
        idle = idle_connections(server.port, 10)
        assert get(server.port, "/readyz") == (200, "ready\n")
        assert [closed_by_server(s, 0.5) for s in idle] == [True] * 7 + [False] * 3
        for sock in idle:
            sock.close()
    finally:
        server.stop()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.0 501 "),
    (b"nonsense\r\n\r\n", b"HTTP/1.0 400 "),
    (b"GET /" + b"x" * 9000, b"HTTP/1.0 431 "),
    (b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.0 200 OK\r\n"),
])
def test_other_requests_get_an_answer_and_a_close(request_bytes: bytes, status: bytes) -> None:
    server = health_server()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request_bytes)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(status), answer
    finally:
        server.stop()
