"""A requested stop while serving drains: unready at once, requests in flight all answered, new ones
refused cleanly once rank 0 stops taking them, then every process gone."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import http_get
from tests.integration.launch import (
    LocalLaunch,
    expected_output,
    kill_leftovers,
    start_local,
    wait_launcher_ready,
    wait_ready,
)

pytestmark = pytest.mark.integration

REQUESTS, REQUEST_S, DRAIN_DELAY_S = 20, 0.5, 1.0  # the toy model answers one request at a time: 10 s in flight


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[LocalLaunch]:
    started = start_local(tmp_path, 2, f"--drain-delay={DRAIN_DELAY_S}", "--drain-timeout=60")
    yield started
    kill_leftovers(started)


def slow_infer(port: int, value: float) -> tuple[list[float], int]:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120, connection_timeout=5)
    tensor = httpclient.InferInput("INPUT", [1], "FP32")
    tensor.set_data_from_numpy(np.asarray([value], dtype=np.float32))
    result = client.infer("toy_tp", [tensor], parameters={"delay_s": REQUEST_S})
    client.close()
    return result.as_numpy("OUTPUT").tolist(), int(result.as_numpy("RANKS")[0])


def refused(port: int) -> float:
    """Seconds a new request took to fail (it must fail, and quickly)."""
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - refused connection or an error answer: either is clean
        slow_infer(port, 9.0)
    return time.monotonic() - started


def test_requests_in_flight_at_a_stop_are_all_answered(launch: LocalLaunch) -> None:
    wait_ready(launch.ports.http, launch.proc)
    wait_launcher_ready(launch.ports.health)
    with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
        answers = [pool.submit(slow_infer, launch.ports.http, float(i)) for i in range(REQUESTS)]
        time.sleep(0.5)  # all sent, one being computed, the rest queued at rank 0
        stopped = time.monotonic()
        launch.proc.send_signal(signal.SIGTERM)
        deadline = stopped + 0.5
        while http_get(launch.ports.health, "/readyz")[0] != 503:
            assert time.monotonic() < deadline, "still ready 0.5 s after SIGTERM"
            time.sleep(0.02)
        while "draining:" not in launch.log.read_text():
            assert time.monotonic() < stopped + 5, "no drain"
            time.sleep(0.05)
        time.sleep(DRAIN_DELAY_S + 0.5)  # rank 0 now refuses what is new and finishes what it has
        assert refused(launch.ports.http) < 2.0
        results = [a.result(timeout=120) for a in answers]
    assert results == [(expected_output([float(i)], 2), 2) for i in range(REQUESTS)]  # every one, correct
    assert launch.proc.wait(timeout=60) == 0
    print(f"SIGTERM -> exit 0 after {time.monotonic() - stopped:.1f}s with {REQUESTS} requests of {REQUEST_S}s")
    assert launch.leftovers() == []
    assert "drained in" in launch.log.read_text()
