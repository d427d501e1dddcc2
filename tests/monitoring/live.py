"""A real `launcher local` run scraped by a real Prometheus the way the chart's PodMonitor has
it scraped, with the chart's rendered rules loaded, under load in phases.

Used by the tests of this directory (one run per test session), by
docs/render_dashboard.py and by ``python -m tests.monitoring.cardinality``.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chart.chart_helpers import Helm, one
from tests.integration.launch import LocalLaunch, Ports, kill_leftovers, launch_env, wait_ready, weighted_repo
from tests.monitoring.chart import release_pod, render, rule_groups, scrape_configs
from tests.monitoring.prom import Prometheus

SCRAPE_INTERVAL_S = 1  # the run is short: the PodMonitor's interval is rendered as 1s, rules evaluated every second
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), with a 1 s step
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
LOAD_BYTES, LOAD_RATE = 12 * 2**20, 4 * 2**20  # each toy rank reads its weights for 3 s: startup progress scraped
# (name, seconds, concurrent clients): idle, one client, four clients, idle. The toy model has one
# instance: one client never waits in the queue, four wait about three times as long as they compute.
PHASES = (("idle", 5.0, 0), ("load", 15.0, 1), ("heavier load", 20.0, 4), ("idle", 5.0, 0))


@dataclass
class LiveRun:
    docs: list[dict[str, Any]]
    launch: LocalLaunch
    prometheus: Prometheus
    started: float  # unix time the launcher was started
    phases: list[tuple[float, float, str]] = field(default_factory=list)  # unix start, end, name
    requests: int = 0
    # after each phase: (phase, requests sent so far, the release's series by kind: series_count())
    series_after: list[tuple[str, int, dict[str, int]]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return str(one(self.docs, "PodMonitor")["metadata"].get("namespace") or "serving")

    @property
    def release(self) -> str:
        return str(one(self.docs, "PodMonitor")["metadata"]["labels"]["app.kubernetes.io/instance"])

    def selector(self) -> str:
        return f'namespace="{self.namespace}", app_kubernetes_io_instance="{self.release}"'

    def series_count(self) -> dict[str, int]:
        """Series of the release Prometheus has held since the run started, by kind: "triton" and
        "launcher" (scraped from that endpoint, with up and scrape_* per target), "recorded" (the
        recording rules), "alerts" (ALERTS and ALERTS_FOR_STATE of pending or firing alerts)."""
        params: dict[str, str | float] = {"match[]": "{" + self.selector() + "}", "start": self.started - 60,
                                          "end": time.time()}
        found = self.prometheus.api("series", **params)
        counts = {"triton": 0, "launcher": 0, "recorded": 0, "alerts": 0}
        for labels in found:
            name = labels["__name__"]
            kind = ("alerts" if name.startswith("ALERTS") else "recorded" if ":" in name
                    else "triton" if labels.get("endpoint") == "metrics" else "launcher")
            counts[kind] += 1
        return counts

    def stop(self) -> None:
        self.prometheus.stop()
        try:
            self.launch.stop()
        finally:
            kill_leftovers(self.launch)


def launch_local(tmp: Path, ranks: int, ports: Ports) -> LocalLaunch:
    """tests.integration.launch.start_local on ports chosen beforehand (Prometheus scrapes them first)."""
    repo = weighted_repo(tmp, ranks, LOAD_BYTES, LOAD_RATE)
    log = tmp / "launcher.log"
    argv = [sys.executable, "-m", "launcher", "local", f"--ranks={ranks}", f"--model-repo={repo}", "--model=toy_tp",
            *ports.flags(), "--stop-grace-period=5"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=launch_env())
    return LocalLaunch(proc, ports, repo, log)


def start(tmp: Path, helm: Helm, ranks: int = 2) -> LiveRun:
    """A Prometheus scraping `launcher local --ranks N` (toy model) from the launcher's first second;
    returns once rank 0 is ready and Prometheus has scraped both targets up."""
    docs = render(helm, f"monitoring.podMonitor.interval={SCRAPE_INTERVAL_S}s")
    ports = Ports.free()
    leader = release_pod(docs, "leader", uid=str(uuid.uuid4()), addresses={
        "http": f"127.0.0.1:{ports.http}", "grpc": f"127.0.0.1:{ports.grpc}",
        "metrics": f"127.0.0.1:{ports.metrics}", "launcher": f"127.0.0.1:{ports.health}"})
    config = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
              "scrape_configs": scrape_configs(one(docs, "PodMonitor"), [leader])}
    prometheus = Prometheus(tmp / "prometheus", config, rule_groups(docs)).start()
    launch: LocalLaunch | None = None
    try:
        started = time.time()
        launch = launch_local(tmp, ranks, ports)
        wait_ready(ports.http, launch.proc, timeout_s=120)
        run = LiveRun(docs, launch, prometheus, started)
        up = prometheus.wait_for(f"count(up{{{run.selector()}}} == 1) == 2", timeout_s=30)
        if not up:
            raise AssertionError(f"both targets not up after 30s: {prometheus.targets()}")
        return run
    except BaseException:
        prometheus.stop()
        if launch is not None:
            try:
                launch.stop()
            finally:
                kill_leftovers(launch)
        raise


def client_loop(port: int, go_on: Callable[[], bool], count: list[int], host: str = "127.0.0.1") -> None:
    """Requests to the toy model on rank 0, back to back, while ``go_on()``."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"{host}:{port}")
    tensor = httpclient.InferInput("INPUT", [64], "FP32")
    tensor.set_data_from_numpy(np.arange(64, dtype=np.float32))
    try:
        while go_on():
            client.infer("toy_tp", [tensor])
            count.append(1)
    finally:
        client.close()


def drive(run: LiveRun, phases: tuple[tuple[str, float, int], ...] = PHASES) -> None:
    """Each phase: that many clients sending requests for that long; records the phases, the
    requests sent and, after each phase, the release's series count."""
    for name, seconds, clients in phases:
        start = time.time()
        until = time.monotonic() + seconds
        count: list[int] = []
        def go_on(until: float = until) -> bool:
            return time.monotonic() < until
        threads = [threading.Thread(target=client_loop, args=(run.launch.ports.http, go_on, count), daemon=True)
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)
        time.sleep(max(0.0, until - time.monotonic()))
        run.requests += len(count)
        run.phases.append((start, time.time(), name))
        time.sleep(2 * SCRAPE_INTERVAL_S)  # scraped and recorded
        run.series_after.append((name, run.requests, run.series_count()))
