"""docs/render_dashboard.py on query_range answers shaped as Prometheus gives them: legends,
gaps, the reason an empty panel is empty, state spans. (tests/monitoring/test_dashboard.py
feeds it a real Prometheus' answers.)"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import REPO, load_renderer

rd = load_renderer()
START = 1000.0


def matrix(labels: dict[str, str], values: list[tuple[float, str]]) -> dict[str, Any]:
    """One series of a query_range answer: values are [unix time, "string"] pairs."""
    return {"metric": labels, "values": [[START + t, v] for t, v in values]}


def panel(title: str, *targets: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"title": title, "type": "timeseries",
            "targets": [{"refId": chr(65 + i), "legendFormat": fmt, "result": result}
                        for i, (fmt, result) in enumerate(targets)]}


def test_legend_is_grafanas_legend_format() -> None:
    labels = {"__name__": "x", "pod": "p0", "model": "toy_tp"}
    assert rd.legend("{{pod}} {{ model }} ok", labels) == "p0 toy_tp ok"
    assert rd.legend("{{missing}}", labels) == "model=toy_tp, pod=p0"
    assert rd.legend("", labels) == "model=toy_tp, pod=p0"


def test_series_are_seconds_since_the_start_and_non_finite_values_are_gaps() -> None:
    data = rd.panel_data(panel("Requests per second",
                               ("{{pod}} ok", [matrix({"pod": "b"}, [(0, "1"), (1, "NaN"), (2, "+Inf"), (3, "2.5")]),
                                               matrix({"pod": "a"}, [(5, "0")])]),
                               ("{{pod}} failed", [matrix({"pod": "a"}, [(1, "NaN")])])), START, {})
    assert data.problem == ""
    assert data.series == [("a ok", [(5.0, 0.0)]), ("b ok", [(0.0, 1.0), (3.0, 2.5)])]


def test_an_empty_panel_says_why() -> None:
    reasons = {"Worker state": "no worker pod"}
    assert rd.panel_data(panel("Worker state", ("{{pod}}", [])), START, reasons).problem == (
        "no series in a local run:\nno worker pod")
    assert rd.panel_data(panel("Other", ("{{pod}}", [])), START, reasons).problem == "no series in a local run"


def test_state_spans_merge_consecutive_samples() -> None:
    points = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (7.0, 1.0), (8.0, 1.0)]
    assert rd.spans(points, 1.0) == [(0.0, 3.0), (7.0, 2.0)]


def synthetic_answers() -> dict[str, Any]:
    """An answer for every panel of the dashboard: one series per target."""
    board = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    panels = []
    for p in board["panels"]:
        targets = [{"refId": t["refId"], "legendFormat": t.get("legendFormat", ""),
                    "result": [matrix({"pod": "p0", "phase": "serving", "model": "toy_tp", "worker_state": "ranked",
                                       "version": "0.1.0", "role": "leader"},
                                      [(float(s), str(s % 7)) for s in range(60)])]}
                   for t in p.get("targets", [])]
        panels.append({"title": p["title"], "type": p["type"], "targets": targets})
    return {"start": START, "end": START + 60, "step": 1.0, "phases": [[START + 10, START + 30, "load"]],
            "requests": 10, "variables": {"namespace": "ns", "release": "rel", "__rate_interval": "4s"},
            "empty_reasons": {}, "panels": panels}


def test_every_panel_of_the_dashboard_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="drawing needs the docs extra (matplotlib)")
    rd.render(synthetic_answers(), tmp_path / "dashboard.png")
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
