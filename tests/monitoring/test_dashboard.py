"""docs/grafana-dashboard.json against a real Prometheus after a real run (conftest.py): every
panel query parses and returns series, except the panels listed in dashboard.EXPECTED_EMPTY
with the reason; the dashboard's variables list the run's namespace and release; and
docs/render_dashboard.py draws what Prometheus answered."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart_helpers import load_renderer
from tests.monitoring import dashboard
from tests.monitoring.live import LiveRun
from tests.monitoring.prom import PrometheusError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def answered(live_run: LiveRun) -> dict[str, Any]:
    return dashboard.answers(live_run)


def test_every_panel_query_parses_and_returns_series(live_run: LiveRun) -> None:
    board = dashboard.board()
    titles = {panel["title"] for panel in board["panels"]}
    assert set(dashboard.EXPECTED_EMPTY) <= titles
    values = dashboard.variables(live_run)
    end = live_run.phases[-1][1]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            query = dashboard.substitute(target["expr"], values)
            assert "$" not in query, query
            try:
                result = live_run.prometheus.query_range(query, live_run.started, end, 1)
            except PrometheusError as exc:
                pytest.fail(f"{panel['title']} {target['refId']}: Prometheus refuses {query}: {exc}")
            if panel["title"] in dashboard.EXPECTED_EMPTY:
                assert result == [], f"{panel['title']} has data now: take it out of EXPECTED_EMPTY"
                continue
            finite = [float(v) for item in result for _, v in item["values"] if math.isfinite(float(v))]
            assert finite, f"{panel['title']} {target['refId']}: no series for {query}"


def test_the_dashboards_variables_list_the_run(live_run: LiveRun) -> None:
    """Its namespace and release pickers (label_values queries) as Prometheus answers them."""
    variables = {v["name"]: v for v in dashboard.board()["templating"]["list"]}
    assert variables["namespace"]["definition"] == "label_values(launcher_build_info, namespace)"
    assert variables["release"]["definition"] == (
        'label_values(launcher_build_info{namespace="$namespace"}, app_kubernetes_io_instance)')
    prom = live_run.prometheus
    assert prom.api("label/namespace/values", **{"match[]": "launcher_build_info"}) == ["serving"]
    assert prom.api("label/app_kubernetes_io_instance/values",
                    **{"match[]": 'launcher_build_info{namespace="serving"}'}) == ["alpha"]


def test_the_renderer_draws_prometheus_answers(answered: dict[str, Any], tmp_path: Path) -> None:
    rd = load_renderer()
    for panel in answered["panels"]:
        if panel["type"] == "row":
            continue
        data = rd.panel_data(panel, answered["start"], answered["empty_reasons"])
        if panel["title"] in dashboard.EXPECTED_EMPTY:
            assert data.problem.endswith(dashboard.EXPECTED_EMPTY[panel["title"]])
        else:
            assert data.series and not data.problem, panel["title"]
    phases = rd.panel_data(next(p for p in answered["panels"] if p["title"] == "Leader phase"),
                           answered["start"], {})
    assert "alpha-lws-triton-0 serving" in [name for name, _ in phases.series]
    pytest.importorskip("matplotlib", reason="drawing the PNG needs the docs extra (matplotlib)")
    rd.render(answered, tmp_path / "dashboard.png")
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
