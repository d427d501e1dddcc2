"""What a failed launch does next (launcher/failures.py), through the Leader with a failure log
standing in for the Events: permanent errors park, transient ones back off when they recur."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from launcher.config import LaunchConfig, RestartPolicy
from launcher.errors import ExitCode, LauncherError
from launcher.failures import FAILED, is_permanent, write_termination_log
from launcher.leader import Leader
from launcher.plan import Member
from tests.conftest import free_port, http_get


@pytest.fixture(autouse=True)
def no_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leaders run in a thread here (signal handlers belong to the main thread); stop.set() is SIGTERM."""
    monkeypatch.setattr("launcher.leader.install_stop_handlers", lambda _stop: None)


class Events:
    """The Events of one LeaderWorkerSet: what earlier leaders recorded, and what this one adds."""

    def __init__(self, earlier: int = 0) -> None:
        self.earlier = earlier
        self.recorded: list[tuple[str, str]] = []

    def record(self, reason: str, message: str) -> None:
        self.recorded.append((reason, message))

    def count(self, reason: str, window_s: float) -> int:
        return self.earlier + sum(1 for r, _ in self.recorded if r == reason)


def leader(tmp_path: Path, events: Events | None, discover_error: LauncherError | None = None,
           repo: Path | None = None, **restart: float) -> Leader:
    def discover(_stop: threading.Event) -> Sequence[Member]:
        if discover_error is not None:
            raise discover_error
        return [Member("localhost", "127.0.0.1", 0)]

    config = LaunchConfig(model_repo=repo or tmp_path / "no-repository", health_port=free_port(),
                          restart=RestartPolicy(**restart))  # type: ignore[arg-type]
    return Leader(config, discover, agent=None, failure_log=events, check_repository=repo is None)


def run_in_thread(target: Leader) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["code"] = target.run()
        except LauncherError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


@pytest.mark.parametrize("earlier,delay", [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 300.0), (20, 300.0)])
def test_the_backoff_doubles_from_the_second_failure_up_to_its_cap(earlier: int, delay: float) -> None:
    assert RestartPolicy(backoff_s=10, backoff_max_s=300).delay(earlier) == delay


def test_what_counts_as_permanent() -> None:
    assert all(is_permanent(c) for c in (64, 65, 66, 69, 80, 81))
    assert not any(is_permanent(c) for c in (75, 76, 77, 78, 79, 1, 137))


def test_a_permanent_error_parks_the_leader_alive_unready_and_recorded(tmp_path: Path) -> None:
    events = Events()
    target = leader(tmp_path, events)
    thread, result = run_in_thread(target)
    port = target.config.health_port
    wait(lambda: http_get(port, "/readyz")[0] == 503)
    code, text = http_get(port, "/readyz")
    assert "not ready: exit 65 in config:" in text and "no-repository" in text
    assert http_get(port, "/healthz")[0] == 200  # alive: the kubelet does not restart it
    assert 'launcher_failed{exit_code="65",phase="config"} 1.0' in http_get(port, "/metrics")[1]
    assert [r for r, _ in events.recorded] == [FAILED] and events.recorded[0][1].startswith("exit 65 in config:")
    time.sleep(0.5)
    assert thread.is_alive() and "code" not in result and "error" not in result  # still parked
    target.stop.set()  # the pod is deleted: SIGTERM
    thread.join(5)
    assert result == {"code": 0}


def test_exit_instead_of_park_when_asked(tmp_path: Path) -> None:
    events = Events()
    thread, result = run_in_thread(leader(tmp_path, events, on_permanent_error="exit"))  # type: ignore[arg-type]
    thread.join(5)
    assert isinstance(result["error"], LauncherError) and result["error"].exit_code == ExitCode.MODEL_REPOSITORY
    assert len(events.recorded) == 1


def test_a_first_transient_failure_exits_at_once(tmp_path: Path) -> None:
    events = Events()
    repo = tmp_path / "repo"
    repo.mkdir()
    lost = LauncherError("discovery: 1/2 pods", ExitCode.DISCOVERY_TIMEOUT)
    t0 = time.monotonic()
    thread, result = run_in_thread(leader(tmp_path, events, discover_error=lost, repo=repo))
    thread.join(5)
    assert result["error"] is lost and time.monotonic() - t0 < 2
    assert events.recorded[0][1] == "exit 75 in discovery: discovery: 1/2 pods"


def test_a_recurring_transient_failure_waits_its_backoff_unready_then_exits(tmp_path: Path) -> None:
    events = Events(earlier=1)  # the group failed once already within the window
    repo = tmp_path / "repo"
    repo.mkdir()
    lost = LauncherError("discovery: 1/2 pods", ExitCode.DISCOVERY_TIMEOUT)
    target = leader(tmp_path, events, discover_error=lost, repo=repo, backoff_s=1.5, backoff_max_s=10)
    t0 = time.monotonic()
    thread, result = run_in_thread(target)
    wait(lambda: http_get(target.config.health_port, "/readyz")[0] == 503)
    assert "backing off 2s after 2 failures" in http_get(target.config.health_port, "/readyz")[1]
    thread.join(10)
    assert result["error"] is lost and 1.5 <= time.monotonic() - t0 < 4


def test_a_stop_during_the_backoff_ends_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    lost = LauncherError("lost", ExitCode.DISCOVERY_TIMEOUT)
    target = leader(tmp_path, Events(earlier=3), discover_error=lost, repo=repo, backoff_s=60, backoff_max_s=600)
    thread, result = run_in_thread(target)
    wait(lambda: target.parked is not None)
    target.stop.set()
    thread.join(5)
    assert result["error"] is lost


def test_without_a_failure_log_errors_exit_as_before(tmp_path: Path) -> None:
    thread, result = run_in_thread(leader(tmp_path, None))
    thread.join(5)
    assert isinstance(result["error"], LauncherError) and result["error"].exit_code == ExitCode.MODEL_REPOSITORY


def test_the_termination_log_gets_one_line_where_the_kubelet_provides_it(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    write_termination_log("exit 78 in serving: a rank ended", log)
    assert not log.exists()  # no file: not in a container
    log.touch()
    write_termination_log("exit 78 in serving: a rank ended", log)
    assert log.read_text() == "exit 78 in serving: a rank ended\n"


def test_a_wrong_rendered_value_parks_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the chart rendered breaks a rule (here a world that two GPUs per pod do not divide): in an
    LWS pod the leader keeps the reason and parks instead of exiting 64 into a recreate loop."""
    from launcher.cli import main

    events, stops = Events(), []
    monkeypatch.setattr("launcher.cli.leader.group_events", lambda _config, _namespace: events)
    monkeypatch.setattr("launcher.leader.install_stop_handlers", stops.append)
    port = free_port()
    result: dict[str, int] = {}
    argv = ["leader", "--tp=3", "--gpus-per-pod=2", f"--health-port={port}", "--namespace=serving",
            "--lws-name=llama", "--pod-name=llama-0", "--group-key=k"]
    thread = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    thread.start()
    wait(lambda: http_get(port, "/readyz")[0] == 503)
    assert "not ready: exit 64 in config: --gpus-per-pod=2: the world size" in http_get(port, "/readyz")[1]
    assert http_get(port, "/healthz")[0] == 200
    assert [r for r, _ in events.recorded] == [FAILED]
    stops[0].set()  # SIGTERM: the pod is replaced
    thread.join(5)
    assert result == {"code": 0}


def test_a_wrong_value_outside_kubernetes_exits_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main

    assert main(["leader", "--tp=3", "--gpus-per-pod=2", "--hosts=a,b"]) == ExitCode.CONFIG_INVALID
    assert "--gpus-per-pod=2: the world size" in capsys.readouterr().err
