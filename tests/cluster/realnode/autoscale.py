"""One scale-out and scale-in of the chart under KEDA on the real nodes, for the autoscaling test and
benchmarks.autoscale: a real Prometheus scrapes the release's pods as its PodMonitor has them scraped
and evaluates its recording rule; KEDA's operator asks it, KEDA's metrics adapter serves the value to
kube-controller-manager's HPA through the test apiserver's aggregation layer; load on group 0's
rank 0 pushes the queue/compute ratio over the target; the HPA asks for 2 groups, LWS makes the
second, whose leader discovers, launches and answers; after the load stops the HPA goes back to 1.

One group here is one pod with one (advertised) GPU, so the two real nodes hold two groups.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from cluster.controlplane import Cluster
from cluster.realnode import RealNodes
from tests.chart.chart_helpers import Helm, one
from tests.cluster.helm import group_pods_selector
from tests.cluster.lws import wait_for
from tests.cluster.realnode.release import LWS, RECOVERY_S, RELEASE, Served, installed
from tests.integration.launch import expected_output, infer
from tests.monitoring.chart import rule_groups, scrape_configs, scraped_pod
from tests.monitoring.live import client_loop
from tests.monitoring.prom import Prometheus

SCRAPE_S = 1  # scrape and rule evaluation interval
CLIENTS = 4  # the toy model has one instance: four clients wait about three times as long as they compute
TARGET = 1  # queue/compute ratio per group: four clients ask for ceil(3 / 1) groups, capped at 2
STARTUP_S = 60  # the chart wants the scale-down window at least this long
HPA = f"keda-hpa-{LWS}"
DECISION_S = 90  # load -> the HPA asking for 2 (the ratio is a rate over 1 minute)
SCALE_DOWN_S = 60 + STARTUP_S + 90  # load stopped -> the ratio's window empties, the scale-down window, LWS


def autoscaled(prometheus: str) -> dict[str, Any]:
    """Changes to the real-node tests' values: one-pod groups autoscaled by KEDA on Prometheus."""
    return {
        "tensorrtLLM": {"parallelism": {"tensor": 1, "pipeline": 1}},
        "startup": {"timeoutSeconds": STARTUP_S, "discoveryTimeoutSeconds": 30},
        "monitoring": {"podMonitor": {"enabled": True, "interval": f"{SCRAPE_S}s"}},
        "autoscaling": {
            "enabled": True, "provider": "keda", "minReplicas": 1, "maxReplicas": 2,
            "metric": {"name": "triton:queue_compute:ratio", "targetAverageValue": str(TARGET)},
            "keda": {"serverAddress": prometheus},
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]},
                "scaleDown": {"stabilizationWindowSeconds": STARTUP_S, "selectPolicy": "Max",
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]},
            },
        },
    }


@dataclass
class Figures:
    """Seconds from the load's start and from its end, what the HPA read, requests sent."""
    decided_s: float  # load -> the HPA asks for 2 groups
    serving_s: float  # load -> the second group's leader answers
    scaled_in_s: float  # load stopped -> the HPA asks for 1 group
    gone_s: float  # load stopped -> the second group's pods are gone
    metric: str  # the HPA's reading when it asked for 2 (sum / target per group, against 1)
    requests: int

    def line(self) -> str:
        return (f"scrape and rules every {SCRAPE_S}s, ratio over 1m, HPA sync 2s, scale-down window {STARTUP_S}s; "
                f"{CLIENTS} clients, {self.requests} requests: load -> HPA asks 2 groups {self.decided_s:.1f}s "
                f"(metric {self.metric}) -> second group answering {self.serving_s:.1f}s; load stopped -> HPA asks "
                f"1 {self.scaled_in_s:.1f}s -> its pods gone {self.gone_s:.1f}s")


class Targets:
    """Keeps Prometheus scraping the release's running pods (Kubernetes SD's view of them, relabelled
    as the rendered PodMonitor has it) as LWS adds and removes groups."""

    def __init__(self, prometheus: Prometheus, served: Served, docs: list[dict[str, Any]]) -> None:
        self.prometheus, self.served, self.docs = prometheus, served, docs
        self.scraped: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="targets", daemon=True)

    def __enter__(self) -> Targets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pods = [p for p in self.served.pods() if p.status.phase == "Running" and p.status.pod_ip]
            seen = {(p.metadata.uid, p.status.pod_ip) for p in pods}
            if seen != self.scraped:
                config = {"global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                          "scrape_configs": scrape_configs(one(self.docs, "PodMonitor"),
                                                           [scraped_pod(p) for p in pods]) if pods else []}
                self.prometheus.reload(config, rule_groups(self.docs))
                self.scraped = seen


class Load:
    """CLIENTS clients sending requests to one leader, back to back, until the block ends."""

    def __init__(self, host: str) -> None:
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=client_loop, args=(8000, lambda: not self._stop.is_set(),
                                                                    self.sent, host), daemon=True)
                         for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def hpa(s: Served) -> Any:
    """The status of the HPA KEDA made for the release, None until it exists."""
    try:
        return client.AutoscalingV2Api(s.cluster.api).read_namespaced_horizontal_pod_autoscaler(HPA, s.ns).status
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def desired(s: Served) -> int | None:
    status = hpa(s)
    return None if status is None else status.desired_replicas


def reading(s: Served) -> Any:
    """What the HPA last read of its metric, None until it exists and has read."""
    status = hpa(s)
    return None if status is None else status.current_metrics


def replicas(s: Served) -> int:
    return int(client.CustomObjectsApi(s.cluster.api).get_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", s.ns, "leaderworkersets", LWS)["spec"]["replicas"])


def pods_listed(s: Served) -> int:
    """The release's group pods the API server still lists, terminating ones too."""
    return len(s.core.list_namespaced_pod(s.ns, label_selector=group_pods_selector(RELEASE)).items)


def leaders_answering(s: Served) -> dict[str, str]:
    """Group leader name -> pod IP, of the leaders that answer an inference (one rank each)."""
    answering = {}
    for pod in s.pods():
        if pod.status.phase == "Running" and pod.status.pod_ip:
            try:
                if infer(8000, [1.0, 2.0, 3.0], host=pod.status.pod_ip) == (expected_output([1.0, 2.0, 3.0], 1), 1):
                    answering[pod.metadata.name] = pod.status.pod_ip
            except Exception:  # noqa: BLE001 - not serving yet
                continue
    return answering


def scale_out_and_in(cluster: Cluster, nodes: RealNodes, helm: Path, workdir: Path) -> Figures:
    """Install with KEDA autoscaling (cluster.start_keda() must have run), load, unload; the figures.
    Fails with what the pods, the HPA, Prometheus' targets and KEDA's logs say when a step times out."""
    with Prometheus(workdir / "prometheus", {"scrape_configs": []}) as prometheus, \
            installed(cluster, nodes, helm, workdir, autoscaled(prometheus.url)) as s:
        docs = Helm(helm, "helm").template(release=RELEASE, values=(s.values_file,), namespace=s.ns)

        def now() -> Any:
            status = hpa(s)
            return {**s.describe(), "hpa": status and status.to_dict(), "lws replicas": replicas(s),
                    "targets": prometheus.targets(),
                    "keda": [p.log.read_text(errors="replace")[-1500:] for p in cluster.keda]}

        with Targets(prometheus, s, docs):
            first = wait_for("group 0 answering", lambda: leaders_answering(s), now, RECOVERY_S, interval_s=1)
            wait_for(f"{HPA} reading the metric", lambda: reading(s), now, 60)
            assert desired(s) == 1 and replicas(s) == 1, now()
            with Load(next(iter(first.values()))) as load:
                began = time.monotonic()
                wait_for("the HPA asking for 2 groups", lambda: desired(s) == 2, now, DECISION_S, interval_s=0.5)
                decided = time.monotonic()
                metric = str(reading(s)[0].external.current.average_value)
                wait_for("a second group answering", lambda: len(leaders_answering(s)) == 2, now, RECOVERY_S,
                         interval_s=1)
                serving = time.monotonic()
                assert replicas(s) == 2, now()
            stopped = time.monotonic()
            wait_for("the HPA back to 1 group", lambda: desired(s) == 1, now, SCALE_DOWN_S, interval_s=0.5)
            scaled_in = time.monotonic()
            wait_for("the second group's pods gone", lambda: pods_listed(s) == 1, now, 120, interval_s=0.5)
            gone = time.monotonic()
            assert replicas(s) == 1 and set(leaders_answering(s)) == set(first), now()
    return Figures(decided - began, serving - began, scaled_in - stopped, gone - stopped, metric, len(load.sent))
