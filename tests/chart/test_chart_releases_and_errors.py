"""Releases stay apart, and wrong values fail with the message that names them."""

from __future__ import annotations

import re

import pytest
from chart_helpers import (
    TUTORIAL,
    Helm,
    one,
    pod_labels_as_created,
    pod_templates,
    selector_matches,
    walk,
)


def selectors(docs: list[dict]) -> list[dict[str, str]]:
    """Every label selector the release's objects use."""
    found = []
    for doc in docs:
        if doc["kind"] == "Service":
            found.append(doc["spec"]["selector"])
        if doc["kind"] == "PodMonitor":
            found.append(doc["spec"]["selector"]["matchLabels"])
    return found


def test_names_and_selectors_carry_the_release(helm: Helm) -> None:
    docs = helm.template(release="alpha", sets=("autoscaling.enabled=true",))
    for doc in docs:
        assert doc["metadata"]["name"].startswith("alpha-"), doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "alpha"
    for selector in selectors(docs):
        assert selector["app.kubernetes.io/instance"] == "alpha"
    for template in pod_templates(one(docs, "LeaderWorkerSet")).values():
        assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "alpha"
    names = [doc["metadata"]["name"] for doc in docs]
    assert len({(d["kind"], name) for d, name in zip(docs, names, strict=True)}) == len(docs)


def test_service_is_not_named_like_the_lws_headless_service(helm: Helm) -> None:
    docs = helm.template()
    # LWS creates a headless Service named after the LeaderWorkerSet.
    assert one(docs, "Service")["metadata"]["name"] != one(docs, "LeaderWorkerSet")["metadata"]["name"]


def test_two_releases_in_one_namespace_are_disjoint(helm: Helm) -> None:
    sets = ("autoscaling.enabled=true",)
    alpha = helm.template(release="alpha", namespace="serving", sets=sets)
    beta = helm.template(release="beta", namespace="serving", sets=sets)

    assert not {(d["kind"], d["metadata"]["name"]) for d in alpha} & {
        (d["kind"], d["metadata"]["name"]) for d in beta}

    for mine, theirs in ((alpha, beta), (beta, alpha)):
        their_lws = one(theirs, "LeaderWorkerSet")
        their_pods = [pod_labels_as_created(their_lws, role) for role in ("leader", "worker")]
        for selector in selectors(mine):
            assert not any(selector_matches(selector, pod) for pod in their_pods), selector
        hpa = one(mine, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == one(mine, "LeaderWorkerSet")["metadata"]["name"]
        binding = one(mine, "RoleBinding")
        assert binding["subjects"][0]["name"] == one(mine, "ServiceAccount")["metadata"]["name"]

    def promql_matchers(docs: list[dict]) -> set[str]:
        rule = one(docs, "PrometheusRule")
        return {m for k, v in walk(rule["spec"]) if k == "expr"  # not the annotations' {{ $labels.pod }}
                for m in re.findall(r"\{[^}]*\}", v)}

    assert promql_matchers(alpha).isdisjoint(promql_matchers(beta))


def test_release_names_that_contain_the_chart_name_are_not_repeated(helm: Helm) -> None:
    lws = one(helm.template(release="lws-triton-prod"), "LeaderWorkerSet")
    assert lws["metadata"]["name"] == "lws-triton-prod"


def test_long_release_names_leave_room_for_lws_pod_names(helm: Helm) -> None:
    release = "a-very-long-release-name-for-a-large-language-model"
    docs = helm.template(release=release)
    lws = one(docs, "LeaderWorkerSet")
    name = lws["metadata"]["name"]
    assert len(name) <= 45 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    # The longest pod name LWS makes: <name>-<group>-<worker>.
    assert len(f"{name}-999-99") <= 63


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        pytest.param(("gpuPerNode=3",),
                     "group size is not a whole number of pods: tensorrtLLM.parallelism.tensor (4)"
                     " x pipeline (2) = 8 GPUs, which gpuPerNode (3) does not divide",
                     id="world-not-divisible"),
        pytest.param(("gpuPerNode=16",), "= 8 GPUs, which gpuPerNode (16) does not divide",
                     id="pod-larger-than-world"),
        pytest.param(("gpuPerNode=0",), "/gpuPerNode", id="zero-gpus"),
        pytest.param(("tensorrtLLM.parallelism.pipeline=0",), "/tensorrtLLM/parallelism/pipeline",
                     id="zero-pipeline"),
        pytest.param(("image.repository=",), "image.repository is required", id="no-image"),
        pytest.param(("modelRepository.persistentVolumeClaim=",),
                     "modelRepository.persistentVolumeClaim is required", id="no-claim"),
        pytest.param(("modelRepository.path=",), "modelRepository.path is required",
                     id="no-model-repository"),
        pytest.param(("modelRepository.path=/data/repo",),
                     "modelRepository.path (/data/repo) must be a directory under "
                     "modelRepository.mountPath (/var/run/models)", id="repo-outside-mount"),
        pytest.param(("serviceAccount.create=false",),
                     "serviceAccount.name is required when serviceAccount.create is false",
                     id="no-existing-account"),
        pytest.param(("autoscaling.enabled=true", "autoscaling.minReplicas=3",
                      "autoscaling.maxReplicas=2"),
                     "autoscaling.minReplicas (3) is greater than autoscaling.maxReplicas (2)",
                     id="min-over-max"),
        pytest.param(("ports.grpc=8000",), "ports.http, ports.grpc, ports.metrics and "
                     "ports.launcher must differ", id="port-clash"),
        pytest.param(("fullnameOverride=9lives",), "/fullnameOverride", id="bad-fullname"),
        pytest.param(("service.type=Ingress",), "/service/type", id="service-type-enum"),
        pytest.param(("lws.restartPolicy=Always",), "/lws/restartPolicy", id="restart-enum"),
        pytest.param(("logging.format=xml",), "/logging/format", id="log-format-enum"),
        pytest.param(("resources.memory=lots",), "/resources/memory", id="bad-quantity"),
        pytest.param(("resources.efa=-1",), "/resources/efa", id="negative-efa"),
        pytest.param(("nsys.enabled=true", "nsys.outputPath="), "/nsys/outputPath", id="nsys-without-path"),
        pytest.param(("nsys.enabled=true", "nsys.outputPath=/var/run/models/nsys"),
                     "nsys.outputPath (/var/run/models/nsys) lies in the model repository's mount", id="nsys-in-repo"),
        pytest.param(("networkPolicy.clients[0].serviceAccount=x",), "/networkPolicy/clients/0",
                     id="unknown-peer-form"),
        pytest.param(("networkPolicy.monitoring[0].ipBlock.cidr=10.0.0.1",), "/networkPolicy/monitoring/0/ipBlock/cidr",
                     id="cidr-without-prefix"),
        pytest.param(("rankEnv.HF_TOKEN.secretRef=x",), "/rankEnv/HF_TOKEN", id="rank-env-unknown-form"),
        pytest.param(("adminApis.restricted[0]=inference",), "/adminApis/restricted/0", id="restrict-inference"),
        pytest.param(("adminApis.keySecret.name=adm",), "adminApis.keySecret.key is required", id="secret-without-key"),
        pytest.param(("gpuPerNodes=4",), "'gpuPerNodes' not allowed", id="unknown-key"),
        pytest.param(("rankEnv.bad-name=1",), "/rankEnv", id="bad-env-name"),
        pytest.param(("terminationGracePeriodSeconds=30",), "terminationGracePeriodSeconds (30) is shorter than "
                     "a drained stop: drain.delaySeconds (5) + drain.timeoutSeconds (30)", id="drain-beyond-grace"),
        pytest.param(("drain.delaySeconds=-1",), "/drain/delaySeconds", id="negative-drain-delay"),
        pytest.param(("restarts.onPermanentError=retry",), "/restarts/onPermanentError", id="permanent-enum"),
        pytest.param(("restarts.backoffSeconds=0",), "/restarts/backoffSeconds", id="zero-backoff"),
        pytest.param(("canary.deadlineSeconds=30",), "canary.deadlineSeconds (30) must be shorter than "
                     "canary.intervalSeconds (30)", id="canary-overlap"),
        pytest.param(("canary.model=a/b",), "/canary/model", id="canary-model-name"),
        pytest.param(("image.tag=",), "image.tag is required (or image.digest)", id="no-image-tag"),
        pytest.param(("image.digest=latest",), "/image/digest", id="bad-digest"),
        pytest.param(("resources.cpuLimit=lots",), "/resources/cpuLimit", id="bad-cpu-limit"),
        pytest.param(("resources.extra.hugepages-2Mi=lots",), "/resources/extra", id="bad-extra-quantity"),
        pytest.param(("resources.extra.cpu=2",), "resources.extra.cpu: the chart sets cpu from its own value",
                     id="extra-repeats-cpu"),
        pytest.param(("probes.leader.startup.periodSeconds=0",), "/probes/leader/startup/periodSeconds",
                     id="zero-probe-period"),
        pytest.param(("probes.leader.liveness.path=/readyz",), "/probes/leader/liveness",
                     id="probe-handler-is-not-a-value"),
        pytest.param(("extraVolumes[0].emptyDir.medium=Memory",), "/extraVolumes/0", id="volume-without-name"),
        pytest.param(("extraVolumeMounts[0].name=x", "extraVolumeMounts[0].mountPath=relative"),
                     "/extraVolumeMounts/0/mountPath", id="relative-mount"),
        pytest.param(("initContainers[0].name=stage",), "/initContainers/0", id="init-without-image"),
        pytest.param(("topologySpreadConstraints[0].maxSkew=1",), "/topologySpreadConstraints/0",
                     id="spread-without-key"),
        pytest.param(("affinity.nodeSelector.a=b",), "/affinity", id="affinity-unknown-kind"),
        pytest.param(("affinity.nodeAffinity.x=y",), "gpu (NVIDIA-A10G) and affinity.nodeAffinity are both set",
                     id="gpu-and-node-affinity"),
        pytest.param(("commonLabels.team=1",), "/commonLabels/team", id="label-not-a-string"),
        pytest.param(("nsys.binary=",), "/nsys/binary", id="no-nsys-binary"),
        pytest.param(("helmTest.waitSeconds=-1",), "/helmTest/waitSeconds", id="negative-test-wait"),
        pytest.param(("preflight.deadlineSeconds=0",), "/preflight/deadlineSeconds", id="zero-preflight-deadline"),
        pytest.param(("autoscaling.behavior.scaleDown.stabilizationWindowSeconds=300",),
                     "autoscaling.behavior.scaleDown.stabilizationWindowSeconds (300) is shorter than a group may "
                     "take to load (startup.timeoutSeconds: 1800", id="hpa-removes-groups-too-soon"),
        pytest.param(("autoscaling.behavior.scaleUp.policies[0].type=Groups",), "/autoscaling/behavior/scaleUp",
                     id="hpa-policy-type"),
        pytest.param(("autoscaling.provider=prometheus-adapter",), "/autoscaling/provider", id="autoscaler-unknown"),
        pytest.param(("autoscaling.keda.serverAddress=prometheus:9090",), "/autoscaling/keda/serverAddress",
                     id="keda-address-not-a-url"),
        pytest.param(("schedulerName=Volcano_Sched",), "/schedulerName", id="scheduler-name"),
        pytest.param(("priorityClassName=high priority",), "/priorityClassName", id="priority-class-name"),
        pytest.param(("kueue.queueName=team/queue",), "/kueue/queueName", id="kueue-queue-name"),
        pytest.param(("kueue.priorityClass=URGENT",), "/kueue/priorityClass", id="kueue-priority-class"),
        pytest.param(("lws.subGroupSize=-1",), "/lws/subGroupSize", id="negative-subgroup"),
        pytest.param(("lws.subGroupSize=3",), "lws.subGroupSize (3) must divide the group size (2 pods) or the group "
                     "size minus its leader (1)", id="subgroup-not-a-divisor"),
        pytest.param(("lws.subGroupExclusiveTopology=nvlink-domain",), "lws.subGroupExclusiveTopology (nvlink-domain) "
                     "places subgroups, but lws.subGroupSize is 0", id="subgroup-topology-without-subgroups"),
        pytest.param(("lws.exclusiveTopology=1",), "/lws/exclusiveTopology", id="exclusive-topology-not-a-label"),
        pytest.param(("lws.rollout.maxSurge=-1",), "/lws/rollout/maxSurge", id="negative-surge"),
        pytest.param(("lws.rollout.maxUnavailable=150%",), "/lws/rollout/maxUnavailable", id="unavailable-over-100"),
        pytest.param(("podDisruptionBudget.maxUnavailable=0",), "/podDisruptionBudget/maxUnavailable",
                     id="budget-blocks-every-drain"),
        pytest.param(("serviceAccount.execAdmissionPolicy=maybe",), "/serviceAccount/execAdmissionPolicy",
                     id="exec-policy-not-a-bool"),
    ],
)
def test_invalid_values_fail_with_the_intended_message(helm: Helm, sets: tuple[str, ...],
                                                       message: str) -> None:
    error = helm.template_error(values=(TUTORIAL,), sets=sets)
    assert message in error, error


def test_release_name_must_start_with_a_letter(helm: Helm) -> None:
    error = helm.template_error(release="7b")
    assert 'object name "7b-lws-triton" is not a DNS-1035 label' in error
    assert "start with a letter" in error
    assert one(helm.template(release="7b", sets=("fullnameOverride=llama-7b",)),
               "LeaderWorkerSet")["metadata"]["name"] == "llama-7b"


def test_a_dot_in_the_release_name_is_named_with_a_name_that_works(helm: Helm) -> None:
    error = helm.template_error(release="llama-3.1-405b")
    assert 'object name "llama-3.1-405b-lws-triton" is not a DNS-1035 label' in error
    assert "(no '.' or '_')" in error and "(e.g. llama-3-1-405b)" in error
    lws = one(helm.template(release="llama-3-1-405b"), "LeaderWorkerSet")
    assert lws["metadata"]["name"] == "llama-3-1-405b-lws-triton"


def test_default_values_need_the_required_ones(helm: Helm) -> None:
    error = helm.template_error(values=())
    assert "is required" in error
