"""Health endpoints and metrics over real HTTP."""

from __future__ import annotations

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
    import pytest

    from launcher.errors import ConfigError

    metrics = LeaderMetrics()
    first = HealthServer(0, metrics.registry, lambda: (True, ""), lambda: (True, ""), host="127.0.0.1").start()
    try:
        with pytest.raises(ConfigError, match=rf"--health-port={first.port}: Address already in use; choose"):
            HealthServer(first.port, metrics.registry, lambda: (True, ""), lambda: (True, ""), host="127.0.0.1")
    finally:
        first.stop()
