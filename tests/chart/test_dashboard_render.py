"""The PromQL subset of docs/render_dashboard.py on synthetic series: what it draws is what
the dashboard's queries mean."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from types import ModuleType

import pytest
from chart_helpers import REPO

SCOPE = {"namespace": "ns", "pod": "p0", "app_kubernetes_io_instance": "rel", "app_kubernetes_io_component": "leader"}


def load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_dashboard", REPO / "docs" / "render_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


rd = load_renderer()


def store_with(series: dict[str, list[tuple[float, float]]], **labels: str) -> object:
    store = rd.SeriesStore()
    for name, points in series.items():
        for t, value in points:
            store.add(t, name, {**SCOPE, "model": "toy", **labels}, value)
    return store


def at(evaluator: object, expr: str, t: float) -> dict[str, float]:
    result = evaluator.instant(rd.Parser(expr).parse(), t)  # type: ignore[attr-defined]
    assert isinstance(result, dict)
    return {",".join(f"{k}={v}" for k, v in sorted(labels) if k in ("pod", "model", "phase")): value
            for labels, value in result.items()}


def counter(per_second: float, until: int = 120) -> list[tuple[float, float]]:
    return [(float(t), per_second * t) for t in range(until + 1)]


def test_rate_is_the_per_second_increase_over_the_window_and_survives_a_reset() -> None:
    points = counter(3.0, 60) + [(61.0, 2.0), (62.0, 5.0), (63.0, 8.0)]  # reset after t=60
    ev = rd.Evaluator(store_with({"c": points}))
    assert at(ev, 'rate(c{namespace="ns"}[10s])', 50.0) == {"model=toy,pod=p0": pytest.approx(3.0)}
    assert at(ev, 'rate(c{namespace="ns"}[5s])', 63.0) == {"model=toy,pod=p0": pytest.approx(3.0 - 1.0 / 4)}
    assert at(ev, 'increase(c[10s])', 50.0) == {"model=toy,pod=p0": pytest.approx(30.0)}
    assert at(ev, 'rate(c{namespace="other"}[10s])', 50.0) == {}
    assert at(ev, 'rate(c[10s])', 0.0) == {}  # one sample is no rate


def test_queue_compute_ratio_from_the_charts_recording_rule() -> None:
    # 300 us queued and 100 us computing per second: ratio 3; no compute at all: clamp_min(.., 1).
    ev = rd.Evaluator(store_with({
        "nv_inference_queue_duration_us": counter(300.0),
        "nv_inference_compute_infer_duration_us": counter(100.0) [:61] + [(float(t), 6000.0) for t in range(61, 121)],
        "nv_inference_request_success": counter(2.0)}),
        rd.chart_recording_rules({"namespace": "ns", "release": "rel"}))
    ratio = 'triton:queue_compute:ratio{namespace="ns", app_kubernetes_io_instance="rel"}'
    assert at(ev, ratio, 60.0) == {"model=toy,pod=p0": pytest.approx(3.0)}
    assert at(ev, ratio, 120.0) == {"model=toy,pod=p0": pytest.approx(300.0)}
    assert at(ev, ratio.replace('"rel"', '"other"'), 60.0) == {}
    assert at(ev, "triton:queue_duration_us:avg", 60.0) == {"model=toy,pod=p0": pytest.approx(150.0)}


def test_division_by_a_filtered_rate_drops_series_without_requests() -> None:
    ev = rd.Evaluator(store_with({"q": counter(10.0), "ok": [(float(t), 7.0) for t in range(121)]}))
    assert at(ev, "sum by (pod) (rate(q[10s])) / (sum by (pod) (rate(ok[10s])) > 0)", 60.0) == {}
    assert at(ev, "sum by (pod) (rate(q[10s])) / clamp_min(sum by (pod) (rate(ok[10s])), 1)", 60.0) == {
        "pod=p0": pytest.approx(10.0)}


def test_scrapes_keep_counter_names_as_exposed_and_add_the_target_labels() -> None:
    store = rd.SeriesStore()
    store.add_exposition(3.0, "# TYPE nv_inference_request_success counter\n"
                         'nv_inference_request_success{model="toy_tp",version="1"} 5\n', SCOPE)
    assert store.matching("nv_inference_request_success", (rd.Matcher("pod", "=", "p0"),)) == {
        frozenset({**SCOPE, "model": "toy_tp", "version": "1", "__name__": "nv_inference_request_success"}.items()):
            [(3.0, 5.0)]}


def test_aggregation_by_labels_and_comparison_filter() -> None:
    store = rd.SeriesStore()
    for i, (pod, phase, value) in enumerate((("a", "serving", 1.0), ("a", "launch", 0.0), ("b", "serving", 0.0),
                                             ("b", "launch", 1.0), ("b", "launch", 1.0))):
        store.add(10.0, "launcher_phase", {**SCOPE, "pod": pod, "phase": phase, "endpoint": str(i)}, value)
    ev = rd.Evaluator(store)
    assert at(ev, "max by (pod, phase) (launcher_phase) == 1", 10.0) == {
        "phase=serving,pod=a": 1.0, "phase=launch,pod=b": 1.0}
    assert at(ev, "sum by (pod) (launcher_phase)", 10.0) == {"pod=a": 1.0, "pod=b": 2.0}
    assert at(ev, "avg by (pod) (launcher_phase)", 10.0)["pod=b"] == pytest.approx(2 / 3)
    assert at(ev, "launcher_phase", 10.0 + rd.LOOKBACK_S + 1) == {}  # stale after the lookback


def test_every_dashboard_query_parses_and_unsupported_promql_is_reported() -> None:
    board = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            rd.Parser(rd.substitute(target["expr"], {**rd.VARIABLES})).parse()
    for expr in ("histogram_quantile(0.9, rate(x_bucket[1m]))", "x offset 5m", "a / on(pod) b", "x[5m]"):
        with pytest.raises(rd.Unsupported):
            ev = rd.Evaluator(store_with({"x": counter(1.0)}))
            ev.instant(rd.Parser(expr).parse(), 60.0)
    assert math.isinf(rd.apply("/", 1.0, 0.0))
