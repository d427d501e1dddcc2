"""docs/grafana-dashboard.json queries only metrics that exist, scoped to one
release; docs/deployment-guide.md's values render and its object names are
the chart's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from chart_helpers import REPO, Helm, one

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
GUIDE = REPO / "docs" / "deployment-guide.md"

# The launcher metrics the dashboard must show (issue 4).
REQUIRED_LAUNCHER_METRICS = {
    "launcher_phase", "launcher_phase_duration_seconds", "launcher_ranks_alive",
    "launcher_mpirun_exit_code", "launcher_build_info", "launcher_time_to_ready_seconds",
}
# Triton's own metric names (Triton's metrics documentation).
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_pending_request_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
}
RELEASE_SCOPE = ('namespace="$namespace"', 'app_kubernetes_io_instance="$release"')


@cache
def launcher_metric_names() -> frozenset[str]:
    """Every sample name the real leader (with its startup progress) and worker registries export."""
    from launcher.observability import LeaderMetrics
    from launcher.startup import StartupMetrics
    from launcher.worker import WorkerAgent

    leader = LeaderMetrics().registry
    StartupMetrics(leader)
    names = set()
    for registry in (leader, WorkerAgent().registry):
        for metric in registry.collect():
            names.update(sample.name for sample in metric.samples)
            names.add(metric.name)
    return frozenset(names)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"])
            for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "release"} <= set(variables)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_every_query_stays_within_one_release() -> None:
    for title, expr in queries():
        selectors = re.findall(r"\{([^}]*)\}", expr)
        selectors = [s for s in selectors if "=" in s]
        assert selectors, f"{title}: {expr}"
        for selector in selectors:
            for scope in RELEASE_SCOPE:
                assert scope in selector, f"{title}: {selector} lacks {scope}"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses"


def test_every_queried_metric_exists(helm: Helm) -> None:
    rule = one(helm.template(), "PrometheusRule")
    recorded = {r["record"] for group in rule["spec"]["groups"] for r in group["rules"] if "record" in r}
    known = launcher_metric_names() | TRITON_METRICS | recorded
    for title, expr in queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{title}: no such metric {unknown}"


def test_dashboard_shows_the_launcher_and_triton_metrics() -> None:
    used = set().union(*(metric_names(expr) for _, expr in queries()))
    assert REQUIRED_LAUNCHER_METRICS <= used
    assert REQUIRED_LAUNCHER_METRICS <= launcher_metric_names()
    for triton in ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_request_duration_us", "triton:queue_compute:ratio"):
        assert triton in used


# ---------------------------------------------------------------------------
# The deployment guide.


def guide_values_files() -> list[tuple[str, str]]:
    """(name, text) of each ```yaml block that starts with `# values: NAME`."""
    blocks = re.findall(r"```yaml\n(# values: (\S+)\n.*?)```", GUIDE.read_text(), re.S)
    return [(name, text) for text, name in blocks]


def guide_release() -> str:
    match = re.search(r"helm install (\S+) ", GUIDE.read_text())
    assert match, "the guide has no helm install command"
    return match.group(1)


def test_guide_values_render(helm: Helm, tmp_path: Path) -> None:
    files = guide_values_files()
    assert files, "the guide has no values example"
    for name, text in files:
        path = tmp_path / name
        path.write_text(text)
        assert yaml.safe_load(text)
        lint = helm.run("lint", "--strict", str(REPO / "chart"), "--values", str(path))
        assert lint.returncode == 0, lint.stdout + lint.stderr
        helm.template(values=(path,), release=guide_release())


def test_guide_names_the_objects_the_chart_creates(helm: Helm, tmp_path: Path) -> None:
    name, text = guide_values_files()[0]
    path = tmp_path / name
    path.write_text(text)
    release = guide_release()
    docs = helm.template(values=(path,), release=release, sets=("autoscaling.enabled=true",))
    lws = one(docs, "LeaderWorkerSet")["metadata"]["name"]
    names = {doc["metadata"]["name"] for doc in docs} | {lws}
    pods = re.compile(rf"{re.escape(lws)}-\d+(-\d+)?")
    mentioned = set(re.findall(rf"\b{re.escape(release)}[-a-z0-9]*", GUIDE.read_text()))
    mentioned.discard(release)
    assert mentioned, "the guide names no objects of its release"
    for word in mentioned:
        assert word in names or pods.fullmatch(word), f"the guide names {word}, which the chart does not create"


def test_guide_covers_the_journey() -> None:
    text = GUIDE.read_text().lower()
    for topic in ("docker build", "trtllm-build", "fill_template", "helm install", "kubectl logs",
                  "generate", "kubectl get hpa", "helm uninstall", "nccl", "launcher preflight",
                  "differs from the original"):
        assert topic in text, f"the guide does not cover {topic!r}"


def test_guide_build_args_are_the_containerfiles() -> None:
    containerfile = (REPO / "triton_trt-llm.containerfile").read_text()
    args = set(re.findall(r"^ARG (\w+)", containerfile, re.M))
    for arg in re.findall(r"--build-arg (\w+)=", GUIDE.read_text()):
        assert arg in args, f"the guide passes --build-arg {arg}, which the containerfile lacks"


@pytest.mark.parametrize("key", ["gpuPerNode", "tensorrtLLM", "modelRepository", "autoscaling",
                                 "monitoring", "logging", "nsys", "preflight", "rankEnv"])
def test_guide_value_names_exist(key: str) -> None:
    values = yaml.safe_load((REPO / "chart" / "values.yaml").read_text())
    assert key in values
    assert f"`{key}" in GUIDE.read_text(), f"the guide does not explain {key}"


# ---------------------------------------------------------------------------
# The guide's dry-run recipe: helm template | docs/leader-args.py | launcher dry-run.

LEADER_ARGS = REPO / "docs" / "leader-args.py"
EXAMPLE_405B = REPO / "chart" / "ci" / "llama-405b-values.yaml"
# Values that add leader arguments (verbose, iso8601, nsys, preflight, rank environment).
EVERY_LEADER_ARG = ("logging.verbose=true", "logging.iso8601=true", "logging.format=json", "nsys.enabled=true",
                    "preflight.enabled=true", "rankEnv.FI_PROVIDER=efa")


def test_guide_gives_the_dry_run_recipe() -> None:
    text = GUIDE.read_text()
    assert "| python3 docs/leader-args.py > leader-args.txt" in text
    assert 'dry-run "${ARGS[@]}" --lws-name llama3-lws-triton' in text


@pytest.mark.parametrize("example", ["guide", "405b"])
def test_guide_dry_run_recipe_plans_the_charts_leader(helm: Helm, tmp_path: Path, example: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever leader arguments the chart renders, the recipe turns them into a dry-run that plans."""
    from launcher.cli import main

    if example == "guide":
        name, text = guide_values_files()[0]
        values = tmp_path / name
        values.write_text(text)
        release = guide_release()
    else:
        values, release = EXAMPLE_405B, "llama405b"
    rendered = helm.run(*helm.template_args(release, (values,), EVERY_LEADER_ARG, "serving", True))
    assert rendered.returncode == 0, rendered.stderr
    args = subprocess.run([sys.executable, str(LEADER_ARGS)], input=rendered.stdout, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert args[:1] != ["leader"] and "--verbose" in args  # every leader option, as the leader gets them
    config = yaml.safe_load(values.read_text())
    tp, pp = config["tensorrtLLM"]["parallelism"]["tensor"], config["tensorrtLLM"]["parallelism"]["pipeline"]
    lws = one(helm.template(values=(values,), release=release), "LeaderWorkerSet")["metadata"]["name"]
    capsys.readouterr()
    code = main(["dry-run", *args, "--lws-name", lws, "--group-index", "0", "--mpi", "5.0", "--output", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    plan = json.loads(out.out)
    assert len(plan["ranks"]) == tp * pp
    assert "--log-verbose=1" in plan["ranks"][0]["argv"]  # -v reaches Triton in the plan as in the launch
    pods = tp * pp // config["gpuPerNode"]
    assert {r["pod"] for r in plan["ranks"]} == {f"{lws}-0"} | {f"{lws}-0-{i}" for i in range(1, pods)}
