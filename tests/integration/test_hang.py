"""Hang detection with the real toy model: one rank made to block in its collective wedges the world
while every process stays alive; the canary notices and the launch ends with exit 82."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.cli.local import EXAMPLE_CANARY
from launcher.errors import ExitCode
from tests.integration.launch import LocalLaunch, expected_output, infer, kill_leftovers, start_local, wait_ready

pytestmark = pytest.mark.integration

INTERVAL_S, DEADLINE_S, MISSES = 1.0, 0.5, 2
CANARY = ["--canary-model=toy_tp", f"--canary-inputs={EXAMPLE_CANARY}", f"--canary-interval={INTERVAL_S}",
          f"--canary-deadline={DEADLINE_S}", f"--canary-misses={MISSES}"]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[LocalLaunch]:
    started = start_local(tmp_path, 2, *CANARY)
    yield started
    kill_leftovers(started)


def wedge(launch: LocalLaunch, rank: int) -> None:
    """A request that makes ``rank`` block forever in its collective (it never returns)."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{launch.ports.http}", network_timeout=60)
    tensor = httpclient.InferInput("INPUT", [1], "FP32")
    tensor.set_data_from_numpy(np.asarray([1.0], dtype=np.float32))
    def send() -> None:
        with contextlib.suppress(Exception):  # it never answers: the connection ends with the launch
            client.infer("toy_tp", [tensor], parameters={"hang_rank": rank})
    threading.Thread(target=send, daemon=True).start()


def test_a_wedged_rank_ends_the_launch_within_interval_times_misses_plus_deadline(launch: LocalLaunch) -> None:
    wait_ready(launch.ports.http, launch.proc)
    time.sleep(INTERVAL_S * (MISSES + 1))  # canaries answered meanwhile: a healthy world is left alone
    assert launch.proc.poll() is None
    assert infer(launch.ports.http, [2.0]) == (expected_output([2.0], 2), 2)
    wedged = time.monotonic()
    wedge(launch, 1)
    assert launch.proc.wait(timeout=30) == ExitCode.HUNG
    took = time.monotonic() - wedged
    assert took <= INTERVAL_S * MISSES + DEADLINE_S + 1.5, took  # + the exit itself
    log = launch.log.read_text()
    assert "answered none of 2 canary inferences of toy_tp within 0.5s" in log, log[-2000:]
    assert launch.leftovers() == []
    print(f"wedged -> exit 82 after {took:.2f}s (interval {INTERVAL_S}s x {MISSES} + deadline {DEADLINE_S}s)")
