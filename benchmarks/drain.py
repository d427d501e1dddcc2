"""Requests lost across a stop under a steady load: the drained stop against a plain one, side by side.

    .venv/bin/python -m benchmarks.drain [--rounds 3] [--rate 50] [--work 0.02]

Each round starts `launcher local --ranks 2` and sends requests at a fixed rate from a pool of clients
(each request keeps rank 0 busy ``--work`` seconds through the toy model's delay_s, so some are always
queued), sends SIGTERM after 3 s and keeps sending for 2 s more. A request *sent before* the SIGTERM
that did not get its correct answer is lost; requests sent after it may be refused (the leader is
unready then). "drained": --drain-delay 1 --drain-timeout 30 (the chart's shape); "plain": --drain-delay
0 --drain-timeout 0.01, every rank stopped at once as before the drain existed. Also: wedge -> exit 82
with a 2 s interval and 2 misses (median of --rounds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.integration.launch import LocalLaunch, expected_output, kill_leftovers, start_local, wait_ready
from tests.integration.test_hang import CANARY, wedge

MODES = {"drained": ["--drain-delay=1", "--drain-timeout=30"], "plain": ["--drain-delay=0", "--drain-timeout=0.01"]}


def request(port: int, value: float, work_s: float) -> bool:
    import numpy as np
    import tritonclient.http as httpclient

    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60, connection_timeout=2)
        tensor = httpclient.InferInput("INPUT", [1], "FP32")
        tensor.set_data_from_numpy(np.asarray([value], dtype=np.float32))
        result = client.infer("toy_tp", [tensor], parameters={"delay_s": work_s})
        client.close()
        return bool(result.as_numpy("OUTPUT").tolist() == expected_output([value], 2))
    except Exception:  # noqa: BLE001 - a failed request is what is counted
        return False


def load_round(mode: str, rate: float, work_s: float) -> tuple[int, int, int, int]:
    """(sent before the stop, lost of those, sent after, served of those)."""
    with tempfile.TemporaryDirectory() as tmp:
        launch: LocalLaunch = start_local(Path(tmp), 2, *MODES[mode])
        try:
            wait_ready(launch.ports.http, launch.proc)
            before: list[concurrent.futures.Future[bool]] = []
            after: list[concurrent.futures.Future[bool]] = []
            with concurrent.futures.ThreadPoolExecutor(512) as pool:  # every request sent when due
                started, stopped = time.monotonic(), None
                i = 0
                while time.monotonic() - started < 5.0:
                    if stopped is None and time.monotonic() - started >= 3.0:
                        launch.proc.send_signal(signal.SIGTERM)
                        stopped = time.monotonic()
                    (after if stopped else before).append(pool.submit(request, launch.ports.http, float(i), work_s))
                    i += 1
                    time.sleep(1.0 / rate)
                lost = sum(1 for f in before if not f.result())
                served = sum(1 for f in after if f.result())
            launch.proc.wait(timeout=60)
            return len(before), lost, len(after), served
        finally:
            kill_leftovers(launch)


def wedge_round() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        launch = start_local(Path(tmp), 2, *[a for a in CANARY if not a.startswith(("--canary-interval",
                                                                                      "--canary-misses"))],
                             "--canary-interval=2", "--canary-misses=2")
        try:
            wait_ready(launch.ports.http, launch.proc)
            wedged = time.monotonic()
            wedge(launch, 1)
            launch.proc.wait(timeout=60)
            return time.monotonic() - wedged
        finally:
            kill_leftovers(launch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--work", type=float, default=0.02, help="seconds each request keeps rank 0 busy")
    args = ap.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.rate:g} req/s of {args.work:g} s")
    print("| mode | sent before SIGTERM | lost of those | sent after | served of those |\n|---|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in MODES:
            sent, lost, late, served = load_round(mode, args.rate, args.work)
            print(f"| {mode} | {sent} | {lost} | {late} | {served} |", flush=True)
    threading.Event().wait(1)
    times = [wedge_round() for _ in range(args.rounds)]
    print(f"wedge -> exit 82 (interval 2 s x 2 misses, deadline 0.5 s; bound 4.5 s): median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)}")


if __name__ == "__main__":
    main()
