"""The leader arguments the chart renders parse with the launcher's own CLI
(launcher.cli.parse_leader_args), and mean what the values say."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from chart_helpers import (
    ALL_OPTIONS,
    CHART,
    CI_VALUES,
    TUTORIAL,
    Helm,
    ci_values_id,
    container,
    one,
    pod_templates,
)

# What the downward API and LWS put into the leader's environment at run time.
RUNTIME_ENV = {
    "LAUNCHER_GROUP_KEY": "0123456789abcdef0123456789abcdef01234567",
    "LAUNCHER_NAMESPACE": "serving",
    "LWS_LEADER_ADDRESS": "alpha-lws-triton-0.alpha-lws-triton.serving",
    "LWS_WORKER_INDEX": "0",
}


def parse_leader_args() -> Callable[[list[str]], Any]:
    try:
        from launcher.cli import parse_leader_args as parse
    except ImportError as error:
        pytest.fail(f"launcher.cli.parse_leader_args(argv) is needed to check the chart's "
                    f"leader arguments: {error}", pytrace=False)
    return parse


def rendered_leader(helm: Helm, values_file: Path, *sets: str) -> tuple[list[str], dict[str, str]]:
    """The leader's argv after `launcher leader`, and the environment it runs with."""
    lws = one(helm.template(values=(values_file,), sets=sets), "LeaderWorkerSet")
    leader = container(pod_templates(lws)["leader"])
    assert leader["command"] == ["launcher"] and leader["args"][0] == "leader"
    env = {"LWS_GROUP_SIZE": str(lws["spec"]["leaderWorkerTemplate"]["size"])}
    for item in leader.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["name"] in RUNTIME_ENV:
            env[item["name"]] = RUNTIME_ENV[item["name"]]
        else:
            env[item["name"]] = f"from-{item['name'].lower()}"
    env.setdefault("LWS_LEADER_ADDRESS", RUNTIME_ENV["LWS_LEADER_ADDRESS"])
    env.setdefault("LWS_WORKER_INDEX", RUNTIME_ENV["LWS_WORKER_INDEX"])
    return leader["args"][1:], env


def parse_with_env(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]) -> Any:
    """Parse as the container would: only the container's environment counts."""
    import os

    parse = parse_leader_args()
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("LAUNCHER_", "LWS_")):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return parse(list(argv))


def comparable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):
        return dict(vars(config))
    return config


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_values_id)
def test_rendered_leader_args_parse(helm: Helm, values_file: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = rendered_leader(helm, values_file)
    assert parse_with_env(monkeypatch, argv, env) is not None


def test_unknown_flags_are_rejected(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shows the parse above would catch a flag the launcher does not have.
    argv, env = rendered_leader(helm, TUTORIAL)
    with pytest.raises((SystemExit, Exception)):
        parse_with_env(monkeypatch, [*argv, "--no-such-flag=1"], env)


def test_tutorial_args_mean_the_tutorial_topology(helm: Helm,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = rendered_leader(helm, TUTORIAL)
    config = parse_with_env(monkeypatch, argv, env)
    assert (config.tp, config.pp, config.gpus_per_pod) == (4, 2, 4)
    # The chart's group size (LWS_GROUP_SIZE) is the launcher's own.
    assert config.group_size == config.pods == 2
    assert str(config.model_repo) == "/var/run/models/llama3_8b_tp4_pp2/triton_model_repo"
    assert (config.http_port, config.grpc_port, config.metrics_port, config.health_port) == (
        8000, 8001, 8002, 8080)
    assert config.group_key == RUNTIME_ENV["LAUNCHER_GROUP_KEY"]
    assert config.namespace == RUNTIME_ENV["LAUNCHER_NAMESPACE"]

    # The same configuration, spelled with the original tutorial's aliases.
    reference = [
        "--tp", "4", "--pp", "2", "--gpu_per_node", "4",
        "--triton_model_repo_dir", "/var/run/models/llama3_8b_tp4_pp2/triton_model_repo",
        "--model", "tensorrt_llm",
        "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002",
        "--health-port", "8080",
        "--startup-timeout", "1800", "--discovery-timeout", "600", "--log-format", "text",
        "--drain-delay", "5", "--drain-timeout", "30", *canary_flags(),
    ]
    assert comparable(config) == comparable(parse_with_env(monkeypatch, reference, env))
    moved = [arg if arg != "--http-port=8000" else "--http-port=8100" for arg in argv]
    assert comparable(config) != comparable(parse_with_env(monkeypatch, moved, env))


def canary_flags() -> list[str]:
    """The chart's default canary (values.yaml), as flags."""
    canary = yaml.safe_load((CHART / "values.yaml").read_text())["canary"]
    return ["--canary-model", canary["model"], "--canary-inputs", canary["inputs"]]


def test_launcher_rejects_a_group_size_the_chart_did_not_compute(
        helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = rendered_leader(helm, TUTORIAL)
    with pytest.raises(Exception, match="LWS_GROUP_SIZE"):
        parse_with_env(monkeypatch, argv, {**env, "LWS_GROUP_SIZE": "3"})


def test_all_options_args_mean_the_values(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = rendered_leader(helm, ALL_OPTIONS)
    config = parse_with_env(monkeypatch, argv, env)
    assert (config.tp, config.pp, config.gpus_per_pod, config.group_size) == (8, 4, 8, 4)
    assert config.nsys.enabled and config.nsys.output_dir == "/mnt/nsys"
    assert config.nsys.binary == "/opt/nvidia/nsight-systems/bin/nsys" and config.preflight.deadline_s == 240
    assert config.iso8601 and config.triton_log_verbose == 1
    assert dict(config.extra_env) == {"NCCL_DEBUG": "INFO"}
    # rankEnv: names in the args, values in the leader's environment only
    assert {"FI_EFA_USE_DEVICE_RDMA", "NCCL_PROTO"} <= set(config.forward_env)
    assert (env["FI_EFA_USE_DEVICE_RDMA"], env["NCCL_PROTO"]) == ("1", "simple")
    assert not [arg for arg in argv if "simple" in arg]
    assert (config.startup_timeout_s, config.discovery_timeout_s) == (3600, 300)

    reference = [
        "--tp", "8", "--pp", "4", "--gpus-per-pod", "8",
        "--model-repo", "/mnt/models/llama3_70b_tp8_pp4/triton_model_repo",
        "--model", "tensorrt_llm",
        "--http-port", "9000", "--grpc-port", "9001", "--metrics-port", "9002",
        "--health-port", "9080",
        "--startup-timeout", "3600", "--discovery-timeout", "300", "--log-format", "json",
        "-v", "--env", "NCCL_DEBUG=INFO", "--iso8601",
        "--enable_nsys", "--nsys-output", "/mnt/nsys", "--nsys-binary", "/opt/nvidia/nsight-systems/bin/nsys",
        "--preflight", "--preflight-deadline", "240",
        "--env", "FI_EFA_USE_DEVICE_RDMA", "--env", "NCCL_PROTO",
        "--drain-delay", "5", "--drain-timeout", "30", *canary_flags(),
    ]
    assert comparable(config) == comparable(parse_with_env(monkeypatch, reference, env))
    quiet = [arg for arg in argv if arg != "--iso8601"]
    assert comparable(config) != comparable(parse_with_env(monkeypatch, quiet, env))


@pytest.mark.parametrize("values_file", [TUTORIAL, ALL_OPTIONS], ids=ci_values_id)
def test_rendered_worker_args_parse(helm: Helm, values_file: Path) -> None:
    try:
        from launcher.cli.worker import worker
    except ImportError as error:
        pytest.fail(f"launcher.cli.worker.worker is needed to check the worker's arguments: {error}",
                    pytrace=False)
    lws = one(helm.template(values=(values_file,)), "LeaderWorkerSet")
    args = container(pod_templates(lws)["worker"])["args"]
    assert args[0] == "worker"
    with worker.make_context("worker", list(args[1:])) as ctx:
        assert ctx.params["health_port"] == int(args[1].split("=")[1])
        assert ctx.params["log_format"] in ("text", "json")
    with pytest.raises(click.NoSuchOption):
        worker.make_context("worker", [*args[1:], "--no-such-flag"])


def launcher_worst_case_s(config: Any) -> float:
    """How long the launcher itself may spend on a start before it gives up: discovery (pods appear),
    readiness (each reachable; the same timeout), the preflight deadline when on, and startup."""
    preflight = config.preflight.deadline_s if config.preflight.enabled else 0.0
    return 2 * config.discovery_timeout_s + preflight + config.startup_timeout_s


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_values_id)
def test_no_probe_can_kill_a_start_the_launcher_still_allows(helm: Helm, values_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe that restarts the leader either asks /healthz, which the launcher answers from its
    first second in every phase (tests/unit/test_leader_health.py), or gives the launcher's whole
    worst case computed from the same rendered arguments, plus a minute."""
    argv, env = rendered_leader(helm, values_file)
    worst = launcher_worst_case_s(parse_with_env(monkeypatch, argv, env))
    leader = container(pod_templates(one(helm.template(values=(values_file,)), "LeaderWorkerSet"))["leader"])
    for name in ("startupProbe", "livenessProbe"):
        probe = leader[name]
        budget = probe["initialDelaySeconds"] + probe["periodSeconds"] * probe["failureThreshold"]
        asks_liveness = probe["httpGet"] == {"path": "/healthz", "port": "launcher"}
        assert asks_liveness or budget >= worst + 60, f"{name}: {budget}s against the launcher's {worst:g}s"
        assert budget >= 20, f"{name}: {budget}s is too short for the launcher to start answering"


@pytest.mark.parametrize("values_file", [TUTORIAL, ALL_OPTIONS], ids=ci_values_id)
def test_helm_test_hook_runs_launcher_infer_on_the_service(helm: Helm, values_file: Path) -> None:
    from launcher.cli.infer import infer

    docs = helm.template(values=(values_file,))
    pod = next(doc for doc in docs if doc["kind"] == "Pod")
    service = one(docs, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test = container(pod)
    assert test["command"] == ["launcher"] and test["args"][0] == "infer"
    with infer.make_context("infer", list(test["args"][1:])) as ctx:
        params = ctx.params
    # the kubelet's variables for the Service (its name upper-cased, '-' as '_'; the port named http)
    prefix = service["metadata"]["name"].upper().replace("-", "_") + "_SERVICE"
    assert service["spec"]["ports"][0]["name"] == "http"
    assert params["url"] == f"$({prefix}_HOST):$({prefix}_PORT_HTTP)"
    assert pod["spec"]["enableServiceLinks"] is True
    values = yaml.safe_load(values_file.read_text())
    canary = {**yaml.safe_load((CHART / "values.yaml").read_text())["canary"], **values.get("canary", {})}
    assert (params["model"], params["inputs"]) == (canary["model"], canary["inputs"])
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"].get("nodeSelector") == values.get("nodeSelector")


def test_helm_test_hook_needs_a_service_and_a_model(helm: Helm) -> None:
    for sets in [("service.enabled=false",), ("canary.model=",), ("helmTest.enabled=false",)]:
        assert not [doc for doc in helm.template(sets=sets) if doc["kind"] == "Pod"], sets
