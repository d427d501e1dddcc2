"""The chart's rules as Prometheus loads them: the rule groups helm renders into the
PrometheusRule pass `promtool check rules`, and `promtool test rules` runs the series
fixtures in fixtures/ against them (the queue/compute ratio rising, a group whose ranks
die, a leader that is not ready, a failed preflight, a parked leader). Every alert has a
case that fires and one that does not; thresholds come from the values."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.errors import ExitCode
from launcher.failures import PERMANENT
from tests.chart.chart_helpers import Helm, helm_or_skip
from tests.monitoring.chart import alerts, render, rule_groups, write_rules
from tests.monitoring.prom import PROMTOOL, binary_or_skip, promtool

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


@pytest.fixture(scope="module")
def helm() -> Helm:
    return helm_or_skip("helm4")


@pytest.fixture(scope="module", autouse=True)
def _promtool() -> None:
    binary_or_skip(PROMTOOL)


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    return render(helm)


def unit_test(tmp: Path, docs: list[dict[str, Any]], fixture: Path) -> tuple[bool, str]:
    """`promtool test rules` of ``fixture`` against the rules rendered in ``docs``."""
    write_rules(docs, tmp / "rules.yaml")
    shutil.copy(fixture, tmp / fixture.name)
    result = promtool("test", "rules", fixture.name, cwd=tmp)
    return result.returncode == 0, result.stdout + result.stderr


def test_rendered_rules_pass_promtool_check(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    rules = write_rules(rendered, tmp_path / "rules.yaml")
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=[f.stem for f in FIXTURE_FILES])
def test_promtool_unit_tests(rendered: list[dict[str, Any]], tmp_path: Path, fixture: Path) -> None:
    passed, output = unit_test(tmp_path, rendered, fixture)
    assert passed, output


def fixture_cases() -> Iterator[tuple[str, str, str, bool]]:
    """(fixture, test group, alertname, fires) of every alert_rule_test."""
    for path in FIXTURE_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                yield path.stem, group["name"], case["alertname"], bool(case["exp_alerts"])


def test_every_alert_has_a_case_that_fires_and_one_that_does_not(rendered: list[dict[str, Any]]) -> None:
    cases = list(fixture_cases())
    names = set(alerts(rendered))
    assert names == {"LWSTritonGroupRecreating", "LWSTritonRankLost", "LWSTritonLeaderNotReady",
                     "LWSTritonQueueComputeHigh", "LWSTritonPreflightFailed", "LWSTritonLeaderParked"}
    for name in names:
        assert any(alert == name and fires for _, _, alert, fires in cases), f"{name}: no case where it fires"
        assert any(alert == name and not fires for _, _, alert, fires in cases), f"{name}: no case where it is quiet"
    assert {alert for _, _, alert, _ in cases} <= names, "a fixture tests an alert the chart does not have"


# Values that move a threshold past what the fixtures expect: each fixture must then fail,
# naming the alert, so the fixtures test the rules as rendered and not some constant.
BROKEN = [
    ("queue_compute_rising", "monitoring.prometheusRule.queueComputeFor=30m", "LWSTritonQueueComputeHigh"),
    ("queue_compute_rising", "autoscaling.metric.targetAverageValue=4", "LWSTritonQueueComputeHigh"),
    ("ranks_die", "monitoring.prometheusRule.groupRecreations=5", "LWSTritonGroupRecreating"),
    ("ranks_die", "monitoring.prometheusRule.rankLostKeepFiringFor=5m", "LWSTritonRankLost"),
    ("leader_not_ready", "startup.discoveryTimeoutSeconds=1200", "LWSTritonLeaderNotReady"),
]


@pytest.mark.parametrize(("fixture", "setting", "alert"), BROKEN, ids=[b[1].rsplit(".", 1)[-1] for b in BROKEN])
def test_fixtures_fail_when_a_threshold_moves(helm: Helm, tmp_path: Path, fixture: str, setting: str,
                                              alert: str) -> None:
    passed, output = unit_test(tmp_path, render(helm, setting), FIXTURES / f"{fixture}.yaml")
    assert not passed, f"{fixture} still passes with {setting}"
    assert f"alertname: {alert}" in output


def test_alerts_are_gated_and_labelled_by_values(helm: Helm) -> None:
    off = render(helm, "monitoring.prometheusRule.alerts=false")
    assert alerts(off) == {}
    assert [r["record"] for g in rule_groups(off) for r in g["rules"]] == [
        "triton:queue_compute:ratio", "triton:queue_duration_us:avg", "triton:compute_infer_duration_us:avg",
        "triton:request_duration_us:avg"]
    labelled = alerts(render(helm, "monitoring.prometheusRule.alertLabels.team=inference"))
    for name, rule in labelled.items():
        assert rule["labels"]["team"] == "inference", name
        assert rule["labels"]["severity"] in ("warning", "critical"), name


@pytest.mark.parametrize(("sets", "budget"), [
    ((), 600 * 2 + 1800),
    (("startup.discoveryTimeoutSeconds=100", "startup.timeoutSeconds=900"), 100 * 2 + 900),
    (("startup.discoveryTimeoutSeconds=100", "startup.timeoutSeconds=900", "preflight.enabled=true",
      "preflight.deadlineSeconds=60"), 100 * 2 + 60 + 900),
])
def test_leader_not_ready_waits_for_the_launch_budget(helm: Helm, sets: tuple[str, ...], budget: int) -> None:
    """The chart's own "lws-triton.launchBudget": discovery and readiness, the preflight when on, startup."""
    rule = alerts(render(helm, *sets))["LWSTritonLeaderNotReady"]
    assert rule["for"] == f"{budget}s"
    assert f"{budget}s" in rule["annotations"]["summary"]


@pytest.mark.parametrize(("quantity", "value"), [("1", 1.0), ("500m", 0.5), ("1.5", 1.5), ("2k", 2000.0),
                                                 ("1Ki", 1024.0), ("25e-1", 2.5), ("750u", 0.00075)])
def test_queue_compute_threshold_is_the_hpa_target(helm: Helm, tmp_path: Path, quantity: str, value: float) -> None:
    """The Kubernetes quantity autoscaling.metric.targetAverageValue as the PromQL number it means
    (promtool evaluates the rendered literal)."""
    docs = render(helm, f"autoscaling.metric.targetAverageValue={quantity}")
    expr = alerts(docs)["LWSTritonQueueComputeHigh"]["expr"]
    literal = re.fullmatch(r"avg by \(namespace, app_kubernetes_io_instance\) \(triton:queue_compute:ratio\{.*\}\) > "
                           r"(.+)", expr)
    assert literal, expr
    write_rules(docs, tmp_path / "rules.yaml")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "fuzzy_compare": True,
        "tests": [{"interval": "1m", "input_series": [],
                   "promql_expr_test": [{"expr": f"vector({literal.group(1)})", "eval_time": "0m",
                                         "exp_samples": [{"labels": "{}", "value": value}]}]}]}))
    result = promtool("test", "rules", "t.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_exit_codes_are_the_launchers(rendered: list[dict[str, Any]]) -> None:
    rules = alerts(rendered)
    assert f'exit_code="{int(ExitCode.RANK_LOST)}"' in rules["LWSTritonRankLost"]["expr"]
    assert f'exit_code="{int(ExitCode.PREFLIGHT_FAILED)}"' in rules["LWSTritonPreflightFailed"]["expr"]
    parked = re.search(r'exit_code=~"([0-9|]+)"', rules["LWSTritonLeaderParked"]["expr"])
    assert parked
    assert {int(c) for c in parked.group(1).split("|")} == {int(c) for c in PERMANENT} - {ExitCode.PREFLIGHT_FAILED}


def test_alerts_read_only_metrics_that_exist(rendered: list[dict[str, Any]]) -> None:
    from launcher.observability import LeaderMetrics
    from launcher.worker import WorkerAgent

    exported = {metric.name for agent in (LeaderMetrics().registry, WorkerAgent().registry)
                for metric in agent.collect()}
    recorded = {r["record"] for g in rule_groups(rendered) for r in g["rules"] if "record" in r}
    for name, rule in alerts(rendered).items():
        used = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["expr"]))
        assert used, name
        assert used <= exported | recorded, f"{name}: {used - exported - recorded} exported by nobody"
