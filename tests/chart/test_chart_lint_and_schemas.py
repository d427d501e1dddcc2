"""helm lint and helm template over every values file in chart/ci, and every
rendered object checked against the schema of its API: Kubernetes' own
(kubernetes-validate) and, for custom resources, the real CRDs (LWS, the
Prometheus operator's PodMonitor and PrometheusRule)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CI_VALUES,
    CRDS,
    INSTALL_HINT,
    REPO,
    TUTORIAL,
    Helm,
    by_kind,
    ci_values_id,
    helm_or_skip,
    merged_values,
    one,
    pod_templates,
)

# Kubernetes versions whose schemas every built-in object must satisfy: the
# oldest this chart supports (autoscaling/v2, LWS) and the newest packaged.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
# Served from 1.30 on; where it is not, the chart does not render it (the API's capability gates it).
SINCE_1_30 = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
CUSTOM_KINDS = {
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    "ScaledObject": "keda.sh_scaledobjects.yaml",
}

values_files = pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_values_id)


def test_ci_values_cover_the_required_matrix() -> None:
    names = {ci_values_id(path) for path in CI_VALUES}
    assert {"tutorial", "one-pod", "efa-off", "autoscaling-off", "autoscaling-keda", "no-service",
            "existing-serviceaccount"} <= names


@values_files
def test_lint_strict(any_helm: Helm, values_file: Path) -> None:
    result = any_helm.run("lint", "--strict", str(values_file.parents[1]),
                          "--values", str(values_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@values_files
def test_renders_exactly_the_enabled_objects(any_helm: Helm, values_file: Path) -> None:
    values = merged_values(values_file)
    expected = {"LeaderWorkerSet"}
    if values["service"]["enabled"]:
        expected.add("Service")
    if values["autoscaling"]["enabled"]:
        expected.add("ScaledObject" if values["autoscaling"]["provider"] == "keda" else "HorizontalPodAutoscaler")
    if values["serviceAccount"]["create"]:
        expected |= {"ServiceAccount", "Role", "RoleBinding"}
        if values["serviceAccount"]["execAdmissionPolicy"]:
            expected |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    if values["monitoring"]["podMonitor"]["enabled"]:
        expected.add("PodMonitor")
    if values["monitoring"]["prometheusRule"]["enabled"]:
        expected.add("PrometheusRule")
    if values["networkPolicy"]["enabled"]:
        expected.add("NetworkPolicy")
    if values["podDisruptionBudget"]["enabled"]:
        expected.add("PodDisruptionBudget")
    if values["helmTest"]["enabled"] and values["service"]["enabled"] and values["canary"]["model"]:
        expected.add("Pod")  # the helm test hook

    docs = any_helm.template(values=(values_file,))
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == sorted(expected)


@values_files
def test_optional_objects_need_their_api(helm: Helm, values_file: Path) -> None:
    docs = helm.template(values=(values_file,), optional_apis=False)
    for kind in ("PodMonitor", "PrometheusRule", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert not by_kind(docs, kind)


@values_files
def test_helm3_and_helm4_render_the_same(helm: Helm, values_file: Path) -> None:
    helm3 = helm_or_skip("helm3")
    assert helm3.template(values=(values_file,)) == helm.template(values=(values_file,))


# ---------------------------------------------------------------------------
# Kubernetes schemas.


@values_files
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_kubernetes_schemas(helm: Helm, values_file: Path,
                                                  version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason=f"kubernetes-validate not installed: {INSTALL_HINT}")
    docs = helm.template(values=(values_file,))
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS or (doc["kind"] in SINCE_1_30 and version < "1.30"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    # The pod templates inside the LWS, checked as core PodTemplates too.
    for role, template in pod_templates(one(docs, "LeaderWorkerSet")).items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": f"{role}-template"}, "template": template}
        kubernetes_validate.validate(pod_template, version, strict=True)
        checked += 1
    assert checked >= 2


@values_files
def test_custom_resources_match_their_crds(helm: Helm, values_file: Path) -> None:
    docs = helm.template(values=(values_file,))
    custom = [doc for doc in docs if doc["kind"] in CUSTOM_KINDS]
    assert any(doc["kind"] == "LeaderWorkerSet" for doc in custom)
    for doc in custom:
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}:\n" + "\n".join(errors)


def test_crd_check_catches_a_misspelt_field(helm: Helm) -> None:
    lws = one(helm.template(), "LeaderWorkerSet")
    lws["spec"]["startupPolcy"] = lws["spec"].pop("startupPolicy")
    assert any("startupPolcy" in error for error in crd_errors(lws))
    lws = one(helm.template(), "LeaderWorkerSet")
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    assert any("Always" in error for error in crd_errors(lws))


def test_kubernetes_check_catches_a_misspelt_field(helm: Helm) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason=f"kubernetes-validate not installed: {INSTALL_HINT}")
    service = one(helm.template(), "Service")
    service["spec"]["selectr"] = service["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip(
        "jsonschema", reason=f"jsonschema not installed: {INSTALL_HINT}")
    group, version = doc["apiVersion"].split("/")
    schema = crd_schema(doc["kind"], group, version)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(doc)]


@cache
def crd_schema(kind: str, group: str, version: str) -> dict[str, Any]:
    path = CRDS / CUSTOM_KINDS[kind]
    if not path.is_file():
        pytest.skip(f"CRD {path.name} not found: {INSTALL_HINT}")
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} {group}/{version} not served by {path.name}"
    return structural_to_strict(served[version]["schema"]["openAPIV3Schema"])


def structural_to_strict(schema: Any) -> Any:
    """An apiserver prunes fields its structural schema does not know, and
    `kubectl apply` (strict field validation) rejects them. Make JSON Schema
    reject them too: objects with properties and no
    x-kubernetes-preserve-unknown-fields get additionalProperties: false.
    Also mirror x-kubernetes-int-or-string."""
    if isinstance(schema, list):
        return [structural_to_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: structural_to_strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


# ---------------------------------------------------------------------------
# values.yaml and NOTES.txt.


def test_values_yaml_documents_every_value() -> None:
    lines = (REPO / "chart" / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match or not match.group(3).strip():
            continue  # a map whose keys are documented one by one
        above = lines[index - 1].strip() if index else ""
        if not above.startswith("#"):
            undocumented.append(f"line {index + 1}: {line.strip()}")
    assert not undocumented, "values without a comment above them:\n" + "\n".join(undocumented)


def test_schema_and_values_yaml_have_the_same_keys() -> None:
    values = yaml.safe_load((REPO / "chart" / "values.yaml").read_text())
    schema = json.loads((REPO / "chart" / "values.schema.json").read_text())

    def walk(node: dict[str, Any], spec: dict[str, Any], path: str) -> None:
        properties = spec.get("properties")
        if properties is None or not isinstance(node, dict) or not node:
            return  # a leaf, or a map that is empty by default (every key optional, like affinity)
        assert spec.get("additionalProperties") is False, f"{path or '/'} must be closed"
        assert set(node) == set(properties) == set(spec.get("required", [])), path or "/"
        for key, value in node.items():
            walk(value, properties[key], f"{path}.{key}")

    walk(values, schema, "")


def install_notes(helm: Helm, *extra: str) -> str:
    """NOTES.txt as `helm install` prints it. A client-side dry run needs no
    cluster in helm v4 (v3 still dials one) and sees no monitoring API."""
    result = helm.run("install", "alpha", str(REPO / "chart"), "--dry-run=client",
                      "--namespace", "serving", "--values", str(TUTORIAL), *extra)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split("NOTES:", 1)[1].split())


def test_notes_give_the_next_commands(helm: Helm) -> None:
    notes = install_notes(helm)
    assert "2 pod(s) x 4 GPU(s), tensor parallel 4 x pipeline parallel 2" in notes
    assert "kubectl get leaderworkerset alpha-lws-triton -n serving" in notes
    assert "kubectl logs -n serving -f alpha-lws-triton-0" in notes
    assert "kubectl port-forward -n serving service/alpha-lws-triton-api 8000:8000" in notes
    assert "helm test alpha -n serving" in notes
    assert "A group gives up a start after at most 3000 s: discovery 600 s + readiness 600 s + startup 1800 s" in notes
    assert "Triton has no authentication" not in notes
    exposed = install_notes(helm, "--set", "service.type=LoadBalancer")
    assert "kubectl get service alpha-lws-triton-api -n serving" in exposed
    assert "WARNING: service.type is LoadBalancer" in exposed and "Triton has no authentication" in exposed
    assert "/v2/models/ensemble/generate" in notes
    assert "kubectl get hpa alpha-lws-triton -n serving" in notes


def test_notes_warn_when_the_monitoring_api_is_missing(helm: Helm) -> None:
    notes = install_notes(helm)
    assert "this cluster does not serve monitoring.coreos.com/v1" in notes
    assert "The autoscaler's metric triton:queue_compute:ratio comes from that PrometheusRule" in notes
    quiet = install_notes(helm, "--set", "monitoring.podMonitor.enabled=false",
                          "--set", "monitoring.prometheusRule.enabled=false",
                          "--set", "service.enabled=false", "--set", "autoscaling.enabled=false")
    assert "WARNING" not in quiet and "kubectl get hpa" not in quiet
    assert "kubectl port-forward -n serving pod/alpha-lws-triton-0 8000:8000" in quiet
