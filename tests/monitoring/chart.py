"""The chart's monitoring objects (PrometheusRule, PodMonitor) as helm renders them, and the
scrape configuration the Prometheus operator would make of that PodMonitor.

There is no Kubernetes service discovery in these tests: each pod's container
ports become static targets that carry the ``__meta_kubernetes_*`` labels
Kubernetes SD (role pod) would give them, and the relabelling is the one the
operator generates from the rendered PodMonitor (pkg/prometheus/promcfg.go,
generatePodMonitorConfig, for the fields this chart uses; any other field
fails here rather than being silently ignored). So the series get exactly the
labels they get in a cluster: namespace, pod, pod_uid, container, endpoint,
job, app_kubernetes_io_instance, app_kubernetes_io_component.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart.chart_helpers import TUTORIAL, Helm, one, pod_templates

# The release the promtool fixtures (tests/monitoring/fixtures) are written for.
RELEASE = "alpha"
NAMESPACE = "serving"
VALUES = (TUTORIAL,)

POD_MONITOR_FIELDS = {"selector", "podTargetLabels", "podMetricsEndpoints", "jobLabel"}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "relabelings"}


def render(helm: Helm, *sets: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return helm.template(release=release, values=VALUES, sets=tuple(sets), namespace=namespace)


def rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``spec.groups`` of the rendered PrometheusRule: a Prometheus rules file's ``groups``."""
    groups: list[dict[str, Any]] = one(docs, "PrometheusRule")["spec"]["groups"]
    return groups


def write_rules(docs: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups(docs)}, sort_keys=False))
    return path


def alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups(docs) for rule in group["rules"] if "alert" in rule}


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass(frozen=True)
class Pod:
    """A pod as Kubernetes SD sees it; ``addresses``: where each named container port really
    listens on this machine (the pod IP:port in a cluster)."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    container: str
    ports: dict[str, int]  # container port name -> containerPort
    addresses: dict[str, str]  # container port name -> host:port here

    def sd_labels(self, port_name: str) -> dict[str, str]:
        """The target labels Kubernetes SD (role pod) gives one container port of this pod."""
        labels = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.name,
            "__meta_kubernetes_pod_uid": self.uid,
            "__meta_kubernetes_pod_ip": self.addresses[port_name].rsplit(":", 1)[0],
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_ready": "true",
            "__meta_kubernetes_pod_container_name": self.container,
            "__meta_kubernetes_pod_container_init": "false",
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_container_port_number": str(self.ports[port_name]),
            "__meta_kubernetes_pod_container_port_protocol": "TCP",
        }
        for key, value in self.labels.items():
            labels[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
            labels[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
        return labels


def release_pod(docs: list[dict[str, Any]], role: str, addresses: dict[str, str], uid: str,
                group: int = 0, worker: int = 0) -> Pod:
    """The leader (or a worker) pod of group ``group`` as LWS creates it from the rendered
    LeaderWorkerSet: the template's labels plus LWS's own, the container's named ports."""
    lws = one(docs, "LeaderWorkerSet")
    template = pod_templates(lws)[role]
    name = lws["metadata"]["name"]
    labels = {**template["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/name": name,
              "leaderworkerset.sigs.k8s.io/group-index": str(group),
              "leaderworkerset.sigs.k8s.io/worker-index": str(worker)}
    container = template["spec"]["containers"][0]
    ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports", [])}
    pod_name = f"{name}-{group}" if role == "leader" else f"{name}-{group}-{worker}"
    namespace = lws["metadata"].get("namespace") or one(docs, "PodMonitor")["metadata"].get("namespace") or NAMESPACE
    return Pod(namespace, pod_name, uid, labels, container["name"], ports, addresses)


def scraped_pod(pod: Any) -> Pod:
    """A running pod of a cluster (a kubernetes client V1Pod) as Kubernetes SD sees it: its named
    container ports at its IP."""
    container = pod.spec.containers[0]
    ports = {port.name: int(port.container_port) for port in container.ports or [] if port.name}
    addresses = {name: f"{pod.status.pod_ip}:{port}" for name, port in ports.items()}
    meta = pod.metadata
    return Pod(meta.namespace, meta.name, meta.uid, dict(meta.labels or {}), container.name, ports, addresses)


def relabel_config(rule: dict[str, Any]) -> dict[str, Any]:
    """A PodMonitor RelabelConfig (camelCase) as Prometheus's relabel_config."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
             "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
    unknown = set(rule) - set(names)
    assert not unknown, f"relabeling fields this translation does not know: {unknown}"
    out = {names[k]: v for k, v in rule.items()}
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def scrape_configs(podmonitor: dict[str, Any], pods: list[Pod]) -> list[dict[str, Any]]:
    """One scrape job per podMetricsEndpoint, relabelled as the Prometheus operator does."""
    spec = podmonitor["spec"]
    unknown = set(spec) - POD_MONITOR_FIELDS
    assert not unknown, f"PodMonitor fields the static translation does not reproduce: {unknown}"
    selector = spec["selector"]
    assert set(selector) == {"matchLabels"}, f"selector {selector}: only matchLabels is translated"
    namespace, name = podmonitor["metadata"].get("namespace") or pods[0].namespace, podmonitor["metadata"]["name"]
    targets = [{"targets": [pod.addresses[port]], "labels": pod.sd_labels(port)}
               for pod in pods for port in pod.ports if port in pod.addresses]
    jobs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        unknown = set(endpoint) - ENDPOINT_FIELDS
        assert not unknown, f"podMetricsEndpoint fields the static translation does not reproduce: {unknown}"
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
        ]
        for key in sorted(selector["matchLabels"]):
            relabel.append({"action": "keep", "regex": f"({selector['matchLabels'][key]});true",
                            "source_labels": [f"__meta_kubernetes_pod_label_{sanitize(key)}",
                                              f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"]})
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]
        for label in spec.get("podTargetLabels", []):
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(label)}"],
                            "target_label": sanitize(label), "regex": "(.+)", "replacement": "${1}"})
        relabel.append({"target_label": "job", "replacement": f"{namespace}/{name}"})
        if spec.get("jobLabel"):
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(spec['jobLabel'])}"],
                            "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
        relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
        relabel += [relabel_config(rule) for rule in endpoint.get("relabelings", [])]
        job: dict[str, Any] = {"job_name": f"podMonitor/{namespace}/{name}/{i}", "honor_labels": False,
                               "static_configs": targets, "relabel_configs": relabel}
        for key, field in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                           ("path", "metrics_path")):
            if key in endpoint:
                job[field] = endpoint[key]
        jobs.append(job)
    return jobs
