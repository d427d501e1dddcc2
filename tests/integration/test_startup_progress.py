"""Startup progress of a launch across two pod sandboxes whose ranks load their weights slowly.

The leader runs in pod0 and a worker agent in pod1, on the same health port (each pod is its own
network namespace), as in a group. Each toy rank reads its own weights file at a throttled rate (the
model's ``rank_weights`` and ``read_rate`` parameters), so the load lasts about eight seconds; the
leader measures its own rank and reads pod1's figures from the worker's /metrics over HTTP.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import VENV_BIN, http_get
from tests.integration.launch import Ports, launch_env, wait_ready, weighted_repo
from tests.integration.test_pods import flavour_args
from tests.podnet import AGENT, Pod, PodNetwork

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

MiB = 2**20
WEIGHTS = 96 * MiB  # per rank
RATE = 12 * MiB  # bytes/s per rank: eight seconds of loading
LINE = re.compile(r"^(?P<time>\S+ \S+) INFO launcher\.progress: startup \S+: ranks (?P<alive>\d+)/2 alive, "
                  r"read .*? \((?P<percent>[\d.]+)%\), slowest pod (?P<slowest>\S+) .*?, "
                  r"[\d.]+ \S+/s, ETA (?P<eta>[^;]+); (?P<rest>.*)$", re.M)


@dataclasses.dataclass
class PodLaunch:
    leader: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    ports: Ports
    log: Path
    pod0: Pod
    pod1: Pod

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def launch(pods: tuple[PodNetwork, Pod, Pod], tmp_path: Path) -> Iterator[Callable[..., PodLaunch]]:
    net, pod0, pod1 = pods
    started: list[PodLaunch] = []

    def start(*extra: str) -> PodLaunch:
        ports, log = Ports.free(), tmp_path / "leader.log"
        worker = pod1.run([str(VENV_BIN / "launcher"), "worker", f"--health-port={ports.health}", "--interval=0.2"],
                          env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        argv = [str(VENV_BIN / "launcher"), "leader", "--hosts=pod0,pod1", "--tp=2", "--gpus-per-pod=1",
                f"--model-repo={weighted_repo(tmp_path, 2, WEIGHTS, RATE)}", "--model=toy_tp", f"--rsh-agent={AGENT}",
                "--stop-grace-period=5", "--progress-interval=0.5", *ports.flags(), *flavour_args("ompi5"), *extra]
        with open(log, "wb") as out:
            leader = pod0.run(argv, env=launch_env(**net.env()), stdout=out, stderr=subprocess.STDOUT)
        started.append(PodLaunch(leader, worker, ports, log, pod0, pod1))
        return started[-1]

    yield start
    for each in started:
        for proc in (each.leader, each.worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def seconds(eta: str) -> float:
    """ "1m05s" -> 65."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", eta)
    assert match and eta, f"not a duration: {eta!r}"
    h, m, s = (int(g or 0) for g in match.groups())
    return 3600 * h + 60 * m + s


def watch_until_ready(launch: PodLaunch, timeout_s: float = 120) -> list[tuple[str, str, str]]:
    """(leader /metrics, leader /readyz, worker /readyz) every 0.2 s until rank 0 is ready."""
    seen = []
    deadline = time.monotonic() + timeout_s
    address, port = launch.pod0.address, launch.ports.health
    while http_get(launch.ports.http, "/v2/health/ready", host=address)[0] != 200:
        assert time.monotonic() < deadline and launch.leader.poll() is None, launch.text()[-4000:]
        seen.append((http_get(port, "/metrics", host=address)[1], http_get(port, "/readyz", host=address)[1],
                     http_get(port, "/readyz", host=launch.pod1.address)[1]))
        time.sleep(0.2)
    return seen


def gauge(metrics: str, name: str, pod: str) -> float | None:
    found = re.search(rf'^launcher_startup_{name}{{group_pod="{pod}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else None


def test_progress_of_a_two_pod_load(launch: Callable[..., PodLaunch]) -> None:
    run = launch()
    seen = watch_until_ready(run)
    wait_ready(run.ports.http, run.leader, host=run.pod0.address)
    deadline = time.monotonic() + 10
    while "rank 0 ready after" not in run.text() or not LINE.findall(run.text().split("rank 0 ready after")[1]):
        assert time.monotonic() < deadline, run.text()[-4000:]
        time.sleep(0.1)
    text = run.text()
    ready_at = stamp(re.search(r"^(\S+ \S+) INFO launcher\.supervisor: rank 0 ready after", text, re.M).group(1))
    lines = list(LINE.finditer(text))
    before = [m for m in lines if stamp(m["time"]) <= ready_at]
    last = next(m for m in lines if stamp(m["time"]) > ready_at)  # sampled once rank 0 answered ready

    # progress lines appear, the ratio rises monotonically from 0 to 1 before rank 0 is ready
    percents = [float(m["percent"]) for m in [*before, last]]
    assert len(before) >= 8, text[-4000:]
    assert percents == sorted(percents) and percents[0] <= 1.0 and percents[-1] >= 99.0, percents
    assert "models: toy_tp READY" in last["rest"] and last["alive"] == "2"

    # the ETA printed at about half way is within a factor of 2 of the time that was left
    half = min(before, key=lambda m: abs(float(m["percent"]) - 50))
    assert 30 <= float(half["percent"]) <= 70, percents
    left = ready_at - stamp(half["time"])
    assert left / 2 <= seconds(half["eta"]) <= 2 * left, (half[0], left)

    # pod1's figures came from its worker over HTTP: in the lines, the metrics and /readyz
    assert not [m for m in before if float(m["percent"]) > 10 and "no figures from pod1" in m[0]]
    for pod in ("pod0", "pod1"):
        ratios = [r for metrics, _, _ in seen if (r := gauge(metrics, "progress_ratio", pod)) is not None]
        assert ratios == sorted(ratios) and ratios[0] < 0.2 and ratios[-1] > 0.8, (pod, ratios)
        assert {gauge(metrics, "bytes_total", pod) for metrics, _, _ in seen} - {None} == {WEIGHTS}
        assert max(gauge(metrics, "bytes_read", pod) or 0 for metrics, _, _ in seen) > 0.8 * WEIGHTS
    readiness = [r for _, r, _ in seen if "; loading " in r]
    assert readiness and re.fullmatch(r"not ready: launch; loading [\d.]+% \(.* of 192\.0 MiB\), ETA \S+\n",
                                      readiness[len(readiness) // 2]), readiness
    assert any(re.fullmatch(r"ranked; read rank 1 [\d.]+ MiB\n", w) for _, _, w in seen), [w for *_, w in seen][-3:]


def rank_tree(pod: Pod, rank: int) -> list[psutil.Process]:
    server = next(p for p in pod.processes() if p.name() == "tritonserver" and f"--id=rank{rank}" in p.cmdline())
    return [server, *server.children(recursive=True)]


def pod1_read(run: PodLaunch) -> int:
    found = re.search(r'^launcher_worker_rank_bytes_read\{rank="1"\} (\S+)$',
                      http_get(run.ports.health, "/metrics", host=run.pod1.address)[1], re.M)
    return int(float(found.group(1))) if found else 0


def test_a_stopped_rank_is_named_in_a_stall_warning(launch: Callable[..., PodLaunch]) -> None:
    run = launch("--stall-warning=3")
    deadline = time.monotonic() + 60
    while pod1_read(run) < 30 * MiB:
        assert time.monotonic() < deadline and run.leader.poll() is None, run.text()[-4000:]
        time.sleep(0.1)
    stopped = rank_tree(run.pod1, 1)
    for proc in stopped:
        proc.suspend()
    suspended = time.monotonic()
    try:
        while "startup stalled" not in run.text():
            assert time.monotonic() - suspended < 10, run.text()[-4000:]
            time.sleep(0.1)
        warned = time.monotonic() - suspended
    finally:
        for proc in stopped:
            proc.resume()
    warning = re.search(r"WARNING launcher\.progress: startup stalled: (.*)", run.text())
    assert warning and re.match(r"rank 1 in pod pod1 has read no byte for [34]s, at (3\d|4\d|5\d)\.\d% of its "
                                r"96\.0 MiB \(rank 0 not ready after \d+s\)$", warning.group(1)), warning
    assert 2.0 <= warned <= 3 + 3.0, warned  # the stall time, give or take a sample and the log's own delay
    wait_ready(run.ports.http, run.leader, host=run.pod0.address)  # once resumed, the load completes
    assert run.text().count("startup stalled") == 1
