"""The leader's view of a model load, from mpirun's start until rank 0 is ready.

Once a second (or every ``--progress-interval``, if shorter) a thread measures this pod's ranks
(``loadmeter``: their process trees under mpirun) and reads every worker pod's figures from its
agent's /metrics, at the pod's address on the health port (every pod of the group serves it on the
same port): plain HTTP inside the group, no Kubernetes API, no exec. It keeps the leader's
``launcher_startup_*`` metrics and the /readyz suffix current, warns once per stall, and every
``--progress-interval`` seconds logs a progress line (or, for ``launcher local`` on a terminal,
keeps a live bar instead).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from .loadmeter import GpuMeter, PodFigures, ProcessTable, RankMeter, parse_pod_figures, rank_roots_under
from .plan import ADMIN_KEY_HEADER, LaunchPlan
from .progress import StartupProgress, Summary, duration, format_line, readiness_suffix

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("launcher.progress")

SAMPLE_INTERVAL_S = 1.0
FETCH_TIMEOUT_S = 1.0
MIN_RATE_WINDOW_S = 5.0
FULL_READ_S = 10.0  # every stat of /proc read again: names and parents that changed (exec, orphans)


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
    interval_s: float  # between progress lines
    stall_s: float  # no byte read this long: a warning
    health_port: int  # the worker agents' (the same on every pod)
    http_port: int  # rank 0's, for its model states
    admin_key: str | None = None  # the model-repository API's, where it is restricted
    live_bar: bool = False  # a bar on the terminal instead of lines

    @property
    def sample_s(self) -> float:
        return min(SAMPLE_INTERVAL_S, self.interval_s)


class View(Protocol):
    def show(self, summary: Summary, models: str | None) -> None:
        """Every sample; ``models`` (rank 0's model states) when a progress line is due."""

    def close(self) -> None: ...


class LineView:
    def show(self, summary: Summary, models: str | None) -> None:
        if models is not None:
            log.info("%s", format_line(summary, models))

    def close(self) -> None:
        pass


class StartupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge

        # group_pod, not pod: a scrape's own pod label (the leader's) would rename a pod label exported_pod
        def gauge(name: str, text: str, labels: tuple[str, ...] = ("group_pod",)) -> Gauge:
            return Gauge(f"launcher_startup_{name}", text, labels, registry=registry)

        self.read = gauge("bytes_read", "Bytes the pod's ranks have read while loading (rchar of their processes)")
        self.total = gauge("bytes_total", "Bytes the pod's ranks read to load the model (from the model repository)")
        self.ratio = gauge("progress_ratio", "bytes_read / bytes_total of the pod, at most 1")
        self.gpu = gauge("gpu_memory_used_bytes", "Memory used on each GPU of the pod (NVML)", ("group_pod", "gpu"))

    def show(self, summary: Summary, figures: Mapping[str, PodFigures | None]) -> None:
        for pod in summary.pods:
            self.read.labels(pod.pod).set(pod.read)
            if pod.total is not None:
                self.total.labels(pod.pod).set(pod.total)
                self.ratio.labels(pod.pod).set(pod.ratio or 0.0)
        for name, pod_figures in figures.items():
            for gpu, used in (pod_figures.gpu_used if pod_figures else {}).items():
                self.gpu.labels(name, str(gpu)).set(used)


def fetch_pod_figures(address: str, port: int, timeout_s: float = FETCH_TIMEOUT_S) -> PodFigures | None:
    """A worker agent's figures from its /metrics; None if it does not answer with them."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        return parse_pod_figures(body.decode()) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("no figures from %s:%d: %s", address, port, exc)
        return None
    finally:
        connection.close()


def model_states(port: int, admin_key: str | None, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """Rank 0's models and their states (POST /v2/repository/index, with the admin key), in words."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/v2/repository/index", body=b"{}",
                           headers={ADMIN_KEY_HEADER: admin_key} if admin_key else {})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return f"rank 0: repository index refused ({response.status})"
        models = json.loads(body)
    except (OSError, http.client.HTTPException):
        return "rank 0: not answering yet"
    except ValueError:
        return "rank 0: unreadable repository index"
    finally:
        connection.close()
    return "models: " + (", ".join(_model_state(m) for m in models) or "none")


def _model_state(model: Mapping[str, str]) -> str:
    reason = f" ({model['reason']})" if model.get("reason") else ""
    return f"{model.get('name', '?')} {model.get('state') or 'UNKNOWN'}{reason}"


class StartupMonitor:
    """Started with mpirun; ``finish`` when rank 0 is ready (a last line), ``close`` on any other end."""

    def __init__(self, plan: LaunchPlan, sizes: Mapping[int, int] | None, options: MonitorOptions) -> None:
        self.options, self.sizes = options, sizes
        self.here = plan.ranks[0].pod
        self.placement: dict[str, list[int]] = {}
        self.addresses: dict[str, str] = {}
        for rank in plan.ranks:
            self.placement.setdefault(rank.pod, []).append(rank.rank)
            self.addresses[rank.pod] = rank.address
        self.summary: Summary | None = None
        self._stop = threading.Event()
        self._last_line = False  # on finish: one more sample and line
        self._thread: threading.Thread | None = None
        self._meter, self._gpus, self._table = RankMeter(), GpuMeter(), ProcessTable()
        self._roots, self._full_read_at = 0, 0.0  # this pod's ranks found, when /proc is next read in full
        self._pool = concurrent.futures.ThreadPoolExecutor(min(16, max(1, len(self.placement) - 1)), "figures")

    def start(self, mpirun_pid: int, metrics: StartupMetrics) -> None:
        self._mpirun = mpirun_pid
        self._metrics = metrics
        self.progress = StartupProgress(self.placement, self.sizes, self.options.stall_s,
                                        max(MIN_RATE_WINDOW_S, self.options.interval_s), time.monotonic())
        self._thread = threading.Thread(target=self._run, args=(self._make_view(),), name="startup-progress",
                                        daemon=True)
        self._thread.start()

    def _make_view(self) -> View:
        if not self.options.live_bar:
            return LineView()
        from .progressbar import BarView

        return BarView()

    def finish(self) -> None:
        """Rank 0 is ready: the thread takes a last sample, shows it and ends (not waited for)."""
        self._last_line = not self._stop.is_set()
        self._stop.set()

    def close(self) -> None:
        """Stop, without a last line; wait for the thread (a bar is cleared before what follows)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5 * FETCH_TIMEOUT_S)
        self._pool.shutdown(wait=False)

    def readiness_suffix(self) -> str:
        summary = self.summary
        return "" if summary is None or self._stop.is_set() else readiness_suffix(summary)

    def _run(self, view: View) -> None:
        next_line = time.monotonic()  # the first line at once: where the load starts from
        try:
            while not self._stop.is_set():
                summary = self._sample()
                due = time.monotonic() >= next_line
                if due:
                    next_line = max(next_line + self.options.interval_s, time.monotonic())
                self._show(view, summary, due)
                self._stop.wait(self.options.sample_s)
            if self._last_line:
                self._show(view, self._sample(), True)
        except Exception:  # noqa: BLE001 - progress must never end a launch
            log.exception("startup progress failed; the launch goes on without it")
        finally:
            view.close()

    def _show(self, view: View, summary: Summary, line_due: bool) -> None:
        view.show(summary, model_states(self.options.http_port, self.options.admin_key) if line_due else None)

    def _sample(self) -> Summary:
        figures = {self.here: self._local(), **self._remote()}
        now = time.monotonic()
        for stall in self.progress.update(now, figures):
            log.warning("startup stalled: %s (rank 0 not ready after %s)", stall,
                        duration(now - self.progress.started))
        self.summary = summary = self.progress.summary(now)
        self._metrics.show(summary, figures)
        return summary

    def _local(self) -> PodFigures:
        mine = set(self.placement[self.here])
        full = self._roots < len(mine) or time.monotonic() >= self._full_read_at
        if full:
            self._full_read_at = time.monotonic() + FULL_READ_S
        table = self._table(full)
        roots = [pid for pid in rank_roots_under(table, self._mpirun) if self._meter.rank_of(pid) in mine]
        read = self._meter.sample(roots, table)
        self._roots = len(roots)
        return PodFigures({r: b for r, b in read.items() if r in mine}, len(roots), self._gpus.used())

    def _remote(self) -> dict[str, PodFigures | None]:
        pods = [pod for pod in self.placement if pod != self.here]
        port = self.options.health_port
        answers = self._pool.map(lambda pod: fetch_pod_figures(self.addresses[pod], port), pods)
        return dict(zip(pods, answers, strict=True))
