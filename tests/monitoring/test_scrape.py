"""What the chart scrapes, scraped for real: `launcher local --ranks 2` (toy model) and
Triton rank 0 as the targets of the scrape jobs the Prometheus operator makes of the rendered
PodMonitor, the rendered PrometheusRule loaded, requests sent in phases (conftest.py). Prometheus
itself evaluates the recording rules and the alerts."""
from __future__ import annotations

import pytest

from tests.monitoring.live import LiveRun
from tests.monitoring.prom import finite, sample_value

pytestmark = pytest.mark.integration


def phase_end(run: LiveRun, name: str) -> float:
    return next(end for _, end, phase in run.phases if phase == name)


def test_both_targets_are_up_with_the_podmonitors_labels(live_run: LiveRun) -> None:
    targets = live_run.prometheus.targets()
    assert {t["labels"]["endpoint"] for t in targets} == {"metrics", "launcher"}  # not http, grpc
    ports = {"metrics": live_run.launch.ports.metrics, "launcher": live_run.launch.ports.health}
    for target in targets:
        labels = target["labels"]
        assert target["health"] == "up", target
        assert target["scrapeUrl"] == f"http://127.0.0.1:{ports[labels['endpoint']]}/metrics"
        assert labels["pod_uid"], labels
        assert {k: v for k, v in labels.items() if k not in ("instance", "pod_uid", "endpoint")} == {
            "namespace": "serving", "pod": "alpha-lws-triton-0", "container": "leader",
            "job": "serving/alpha-lws-triton", "app_kubernetes_io_instance": "alpha",
            "app_kubernetes_io_component": "leader"}
    up = live_run.prometheus.query(f"up{{{live_run.selector()}}}")
    assert sorted((s["metric"]["endpoint"], sample_value(s)) for s in up) == [("launcher", 1.0), ("metrics", 1.0)]


def test_prometheus_evaluates_the_charts_recording_rules(live_run: LiveRun) -> None:
    prom = live_run.prometheus
    loaded = {rule["name"]: rule for group in prom.rule_groups_loaded() for rule in group["rules"]}
    assert len(loaded) == 10
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    at = phase_end(live_run, "heavier load")
    for record in ("triton:queue_compute:ratio", "triton:queue_duration_us:avg",
                   "triton:compute_infer_duration_us:avg", "triton:request_duration_us:avg"):
        samples = prom.query(f"{record}{{{live_run.selector()}}}", at)
        assert finite(samples), (record, samples)
        assert {s["metric"]["model"] for s in samples} == {"toy_tp"}
        assert {s["metric"]["pod"] for s in samples} == {"alpha-lws-triton-0"}


def test_the_ratio_follows_the_load_and_the_alert_goes_pending(live_run: LiveRun) -> None:
    """One client never waits; four clients on the toy model's single instance wait about three
    times as long as they compute, above the HPA target (1): LWSTritonQueueComputeHigh pending, its
    15m not yet up. No alert fires in this healthy run."""
    prom, sel = live_run.prometheus, live_run.selector()
    one_client = sample_value(prom.query(f"triton:queue_compute:ratio{{{sel}}}", phase_end(live_run, "load"))[0])
    four = sample_value(prom.query(f"triton:queue_compute:ratio{{{sel}}}", phase_end(live_run, "heavier load"))[0])
    assert one_client < 0.5 < 1.2 < four, (one_client, four)
    pending = prom.query('ALERTS{alertname="LWSTritonQueueComputeHigh", alertstate="pending"}',
                         phase_end(live_run, "heavier load"))
    assert [s["metric"]["app_kubernetes_io_instance"] for s in pending] == ["alpha"]
    firing = prom.query_range('ALERTS{alertstate="firing"}', live_run.started, live_run.phases[-1][1], 1)
    assert firing == []


def test_series_do_not_grow_with_requests(live_run: LiveRun) -> None:
    """Cardinality: the release's scraped and recorded series are as many after the single-client
    phase as after four more clients' requests, and after the idle end. (Alerts add their own
    ALERTS series while pending or firing; the average-duration rules record only once requests
    succeed.)"""
    after = {name: (requests, series) for name, requests, series in live_run.series_after}
    (few, series_few), (more, series_more) = after["load"], after["heavier load"]
    assert more > few > 0

    def held(series: dict[str, int]) -> dict[str, int]:
        return {kind: n for kind, n in series.items() if kind != "alerts"}

    assert held(series_few) == held(series_more) == held(live_run.series_after[-1][2]), live_run.series_after
    assert series_few["triton"] > 0 and series_few["launcher"] > 0 and series_few["recorded"] == 4
