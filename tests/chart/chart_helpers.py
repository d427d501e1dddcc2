"""Helpers shared by the chart, image and dashboard tests.

The tools come from scripts/install-test-tools.sh (into .cache/tools); a test
that needs a missing tool skips and says so. HELM, HELM3, HADOLINT and
TOOLS_DIR in the environment override the locations.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TUTORIAL = CHART / "ci" / "tutorial-values.yaml"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
TOOLS = Path(os.environ.get("TOOLS_DIR", REPO / ".cache" / "tools"))
CRDS = TOOLS / "crds"
INSTALL_HINT = "run scripts/install-test-tools.sh"
MONITORING_API = "monitoring.coreos.com/v1"
ADMISSION_POLICY_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
# The optional APIs the chart renders objects for only where the cluster serves them.
OPTIONAL_APIS = (MONITORING_API, ADMISSION_POLICY_API)

# Labels LWS puts on the pods it creates (leaderworkerset.sigs.k8s.io/...).
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"


def find_tool(name: str, env_var: str, path_fallback: bool = True) -> Path | None:
    """The tool from $env_var, else the installer's cache, else PATH."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    cached = TOOLS / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    found = shutil.which(name) if path_fallback else None
    return Path(found) if found else None


@dataclass(frozen=True)
class Helm:
    """One helm binary, with the calls the tests make."""

    binary: Path
    label: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HELM_CACHE_HOME": str(TOOLS / "helm-home" / "cache"),
                 "HELM_CONFIG_HOME": str(TOOLS / "helm-home" / "config"),
                 "HELM_DATA_HOME": str(TOOLS / "helm-home" / "data")},
        )

    def template_args(
        self,
        release: str,
        values: tuple[Path, ...],
        sets: tuple[str, ...],
        namespace: str,
        optional_apis: bool,
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        if optional_apis:
            args += [word for api in OPTIONAL_APIS for word in ("--api-versions", api)]
        return args

    def template(
        self,
        release: str = "alpha",
        values: tuple[Path, ...] = (TUTORIAL,),
        sets: tuple[str, ...] = (),
        namespace: str = "serving",
        optional_apis: bool = True,
    ) -> list[dict[str, Any]]:
        """Render and parse; fails the test with helm's message if rendering fails."""
        docs = _render(self, release, values, sets, namespace, optional_apis)
        return copy.deepcopy(docs)

    def template_error(
        self,
        release: str = "alpha",
        values: tuple[Path, ...] = (TUTORIAL,),
        sets: tuple[str, ...] = (),
        namespace: str = "serving",
    ) -> str:
        """Render values that must be rejected; return helm's error output."""
        result = self.run(*self.template_args(release, values, sets, namespace, True))
        assert result.returncode != 0, f"{self.label} rendered values that should fail: {sets}"
        return result.stderr


@cache
def _render(
    helm: Helm,
    release: str,
    values: tuple[Path, ...],
    sets: tuple[str, ...],
    namespace: str,
    optional_apis: bool,
) -> list[dict[str, Any]]:
    result = helm.run(*helm.template_args(release, values, sets, namespace, optional_apis))
    if result.returncode != 0:
        pytest.fail(f"{helm.label} template failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ci_values_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


# ---------------------------------------------------------------------------
# Rendered-object helpers.


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_templates(lws: dict[str, Any]) -> dict[str, dict[str, Any]]:
    template = lws["spec"]["leaderWorkerTemplate"]
    return {"leader": template["leaderTemplate"], "worker": template["workerTemplate"]}


def container(pod_template: dict[str, Any]) -> dict[str, Any]:
    containers = pod_template["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def merged_values(*paths: Path) -> dict[str, Any]:
    """values.yaml overlaid with the given files, the way helm merges maps."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in paths:
        merge_into(values, yaml.safe_load(path.read_text()) or {})
    return values


def merge_into(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    """Lay ``overlay`` over ``base`` in place, the way helm merges maps."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = value


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels_as_created(lws: dict[str, Any], role: str, group: int = 0) -> dict[str, str]:
    """The labels a pod of this LWS carries once LWS creates it."""
    labels = dict(pod_templates(lws)[role]["metadata"]["labels"])
    labels[LWS_NAME] = lws["metadata"]["name"]
    labels[LWS_WORKER_INDEX] = "0" if role == "leader" else "1"
    labels["leaderworkerset.sigs.k8s.io/group-index"] = str(group)
    labels[LWS_GROUP_KEY] = f"{lws['metadata']['name']}-{group}-key"
    return labels


def walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) pair of nested dicts and lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def helm_or_skip(label: str) -> Helm:
    """helm4 (required) or helm3 (optional); skips when the binary is missing."""
    if label == "helm4":
        binary = find_tool("helm", "HELM")
        if binary is None:
            pytest.skip(f"helm not found: {INSTALL_HINT}")
    else:
        binary = find_tool("helm3", "HELM3", path_fallback=False)
        if binary is None:
            pytest.skip(f"helm v3 not found (optional, built with Go): {INSTALL_HINT}")
    return Helm(binary, label)


def load_renderer() -> ModuleType:
    """docs/render_dashboard.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("render_dashboard", REPO / "docs" / "render_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
