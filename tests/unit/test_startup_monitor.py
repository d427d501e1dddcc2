"""The leader's startup monitor over real processes: a stand-in mpirun whose ranks read files slowly."""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from launcher.loadmeter import PodFigures
from launcher.plan import LaunchPlan, MpiFlavor, Rank
from launcher.progress import StartupProgress
from launcher.progressbar import BarView
from launcher.startup import MonitorOptions, StartupMetrics, StartupMonitor, model_states
from tests.conftest import free_port

MiB = 2**20
READER = """
import sys, time
path, rate = sys.argv[1], float(sys.argv[2])
done, started, buffer = 0, time.monotonic(), bytearray(int(rate) // 20)
with open(path, "rb", buffering=0) as f:
    while n := f.readinto(buffer):
        done += n
        time.sleep(max(0.0, started + done / rate - time.monotonic()))
time.sleep(60)
"""


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def mpirun(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process named mpirun whose two children, ranks 0 and 1, read 6 MiB each at 3 MiB/s."""
    (tmp_path / "reader.py").write_text(READER)
    for rank in (0, 1):
        (tmp_path / f"w{rank}").write_bytes(b"\0" * 6 * MiB)
    script = tmp_path / "mpirun"
    script.write_text("#!/bin/sh\n" + "".join(
        f"OMPI_COMM_WORLD_RANK={r} {sys.executable} {tmp_path / 'reader.py'} {tmp_path / f'w{r}'} {3 * MiB} &\n"
        for r in (0, 1)) + "wait\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)], start_new_session=True)
    yield proc, tmp_path
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def plan(pods: dict[str, list[int]]) -> LaunchPlan:
    ranks = tuple(Rank(r, pod, "127.0.0.1", i, ()) for pod, rs in pods.items() for i, r in enumerate(rs))
    return LaunchPlan(MpiFlavor(5, 0), (), ranks, (), {}, (), "")


def metric(registry: CollectorRegistry, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", generate_latest(registry).decode(), re.M)
    return float(found.group(1)) if found else None


def test_lines_metrics_readiness_and_a_stall(mpirun: tuple[subprocess.Popen[bytes], Path],
                                            caplog: pytest.LogCaptureFixture) -> None:
    proc, _ = mpirun
    caplog.set_level(logging.INFO, "launcher.progress")
    options = MonitorOptions(interval_s=0.5, stall_s=1.0, health_port=free_port(), http_port=free_port())
    monitor, registry = StartupMonitor(plan({"here": [0, 1]}), {0: 6 * MiB, 1: 6 * MiB}, options), CollectorRegistry()
    monitor.start(proc.pid, StartupMetrics(registry))
    eventually(lambda: (metric(registry, 'launcher_startup_progress_ratio{group_pod="here"}') or 0) > 0.2)
    assert re.fullmatch(r"; loading \d+\.\d% \(.* MiB of 12\.0 MiB\), ETA \d+s", monitor.readiness_suffix())
    rank1 = next(p for p in psutil.Process(proc.pid).children() if p.environ().get("OMPI_COMM_WORLD_RANK") == "1")
    rank1.suspend()
    try:
        eventually(lambda: any("stalled" in r.getMessage() for r in caplog.records), timeout_s=5)
    finally:
        rank1.resume()
    eventually(lambda: metric(registry, 'launcher_startup_progress_ratio{group_pod="here"}') == 1.0)
    monitor.finish()
    monitor.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("startup ")]
    stalls = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalls) == 1
    assert re.match(r"startup stalled: rank 1 in pod here has read no byte for 1s, at \d", stalls[0])
    assert re.match(r"startup 0s: ranks \d/2 alive, read .* \(\d+\.\d%\)", lines[0])
    assert lines[-1].startswith("startup ") and "(100.0%)" in lines[-1] and lines[-1].endswith(
        "; rank 0: not answering yet")
    assert metric(registry, 'launcher_startup_bytes_total{group_pod="here"}') == 12 * MiB
    assert monitor.readiness_suffix() == ""  # finished: /readyz says no more


def test_a_broken_sample_ends_the_progress_not_the_launch(mpirun: tuple[subprocess.Popen[bytes], Path],
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("no /proc here")

    monkeypatch.setattr("launcher.loadmeter.ProcessTable.__call__", broken)
    options = MonitorOptions(interval_s=0.5, stall_s=1.0, health_port=free_port(), http_port=free_port())
    monitor = StartupMonitor(plan({"here": [0, 1]}), None, options)
    monitor.start(mpirun[0].pid, CollectorRegistry())
    eventually(lambda: any("startup progress failed" in r.getMessage() for r in caplog.records))
    monitor.close()


class _Index(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        ok = self.path == "/v2/repository/index" and self.headers.get("admin-key") == "secret"
        body = json.dumps([{"name": "toy_tp", "version": "1", "state": "READY"},
                           {"name": "broken", "state": "UNAVAILABLE", "reason": "no file"}]).encode()
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_rank0s_model_states_need_the_admin_key() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert model_states(port, "secret") == "models: toy_tp READY, broken UNAVAILABLE (no file)"
        assert model_states(port, None) == "rank 0: repository index refused (403)"
    finally:
        server.shutdown()
        server.server_close()
    assert model_states(port, "secret") == "rank 0: not answering yet"


def test_the_bar_draws_and_logs_go_above_it() -> None:
    out = io.StringIO()
    before = logging.getLogger().handlers[:]
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    try:
        bar = BarView(stream=out, force_terminal=True)
        progress = StartupProgress({"localhost": [0]}, {0: 100 * MiB}, 60.0, 5.0, 0.0)
        progress.update(0.0, {"localhost": PodFigures({0: 0}, 1)})
        progress.update(2.0, {"localhost": PodFigures({0: 40 * MiB}, 1)})
        bar.show(progress.summary(2.0), None)
        logging.getLogger("launcher.test").warning("a warning while loading")
        bar.close()
        assert logging.getLogger().handlers == [handler]
    finally:
        logging.getLogger().handlers[:] = before
    text = out.getvalue()
    assert "LOG a warning while loading" in text
    assert "40%" in text and "40.0 MiB / 100.0 MiB 20.0 MiB/s ETA 3s ranks 1/1 2s" in text
