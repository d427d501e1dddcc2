"""The leader in Kubernetes answers /healthz from its first second, in every phase before serving,
so the kubelet's startup and liveness probes never race the launcher's own start-up timeouts
(tests/chart/test_chart_launcher_args.py relies on this)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from launcher.config import LaunchConfig
from launcher.errors import ExitCode, LauncherError
from launcher.leader import Leader
from launcher.plan import Member
from tests.conftest import free_port, http_get
from tests.unit.test_failures import run_in_thread, wait


@pytest.fixture(autouse=True)
def no_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("launcher.leader.install_stop_handlers", lambda _stop: None)


def test_healthz_answers_while_discovery_waits(tmp_path: Path) -> None:
    released = threading.Event()

    def slow_discovery(_stop: threading.Event) -> Sequence[Member]:
        released.wait(10)
        raise LauncherError("the group's pods did not appear", ExitCode.DISCOVERY_TIMEOUT)

    port = free_port()
    target = Leader(LaunchConfig(model_repo=tmp_path, health_port=port), slow_discovery, agent=None,
                    check_repository=False, health_first=True)
    thread, result = run_in_thread(target)
    wait(lambda: target.phase.value == "discovery")
    wait(lambda: http_get(port, "/healthz")[0] == 200)
    assert http_get(port, "/healthz") == (200, "discovery\n")
    assert http_get(port, "/readyz")[0] == 503
    released.set()
    thread.join(5)
    assert isinstance(result["error"], LauncherError) and result["error"].exit_code == ExitCode.DISCOVERY_TIMEOUT
