"""What the chart renders from its values: group size, pods, probes,
resources, scheduling, Service, HPA, monitoring and RBAC."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chart_helpers import (
    ALL_OPTIONS,
    TUTORIAL,
    Helm,
    by_kind,
    container,
    merged_values,
    one,
    pod_labels_as_created,
    pod_templates,
    selector_matches,
    walk,
)


def lws_of(helm: Helm, *sets: str, values=(TUTORIAL,)) -> dict:
    return one(helm.template(values=values, sets=sets), "LeaderWorkerSet")


@pytest.mark.parametrize(
    ("tensor", "pipeline", "gpus", "size"),
    [(4, 2, 4, 2), (4, 1, 4, 1), (8, 2, 8, 2), (1, 1, 1, 1), (16, 1, 2, 8), (2, 3, 1, 6)],
)
def test_group_size_is_world_size_over_gpus_per_pod(helm: Helm, tensor: int, pipeline: int,
                                                     gpus: int, size: int) -> None:
    lws = lws_of(helm, f"tensorrtLLM.parallelism.tensor={tensor}",
                 f"tensorrtLLM.parallelism.pipeline={pipeline}", f"gpuPerNode={gpus}")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == size
    for template in pod_templates(lws).values():
        assert container(template)["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_group_policies(helm: Helm) -> None:
    spec = lws_of(helm)["spec"]
    assert spec["startupPolicy"] == "LeaderCreated"
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    spec = lws_of(helm, "lws.restartPolicy=None")["spec"]
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "None"


def test_replicas_only_when_autoscaling_is_off(helm: Helm) -> None:
    assert "replicas" not in lws_of(helm, "autoscaling.enabled=true")["spec"]
    spec = lws_of(helm, "autoscaling.enabled=false", "lws.replicas=3")["spec"]
    assert spec["replicas"] == 3


def test_containers_run_the_launcher(helm: Helm) -> None:
    templates = pod_templates(lws_of(helm))
    leader, worker = container(templates["leader"]), container(templates["worker"])
    assert leader["command"] == worker["command"] == ["launcher"]
    assert leader["args"][0] == "leader"
    assert worker["args"] == ["worker", "--health-port=8080", "--log-format=text"]
    assert "--tp=4" in leader["args"] and "--pp=2" in leader["args"]
    assert "--gpus-per-pod=4" in leader["args"]
    assert "--model-repo=/var/run/models/llama3_8b_tp4_pp2/triton_model_repo" in leader["args"]


def test_leader_learns_its_group_through_the_downward_api(helm: Helm) -> None:
    leader = container(pod_templates(lws_of(helm))["leader"])
    env = {item["name"]: item for item in leader["env"]}
    assert env["LAUNCHER_GROUP_KEY"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['leaderworkerset.sigs.k8s.io/group-key']")
    assert env["LAUNCHER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_only_the_leader_mounts_an_api_token(helm: Helm) -> None:
    templates = pod_templates(lws_of(helm))
    assert templates["worker"]["spec"]["automountServiceAccountToken"] is False
    assert templates["leader"]["spec"].get("automountServiceAccountToken", True) is True


def test_leader_probes(helm: Helm) -> None:
    leader = container(pod_templates(lws_of(helm, "startup.timeoutSeconds=5400", "startup.discoveryTimeoutSeconds=600",
                                            "autoscaling.enabled=false"))["leader"])
    ports = {port["name"]: port["containerPort"] for port in leader["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "launcher": 8080}
    # the launcher answers all three: the kubelet never races the launcher's own start-up budget
    assert leader["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "launcher"}
    assert leader["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "launcher"}
    assert leader["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "launcher"}
    startup = leader["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 60  # for the launcher to come up
    assert "--startup-timeout=5400" in leader["args"]
    assert "--discovery-timeout=600" in leader["args"]


def test_worker_probes_use_the_worker_agent(helm: Helm) -> None:
    worker = container(pod_templates(lws_of(helm, "ports.launcher=9090"))["worker"])
    assert worker["ports"] == [{"name": "launcher", "containerPort": 9090, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "launcher"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "launcher"}
    assert "startupProbe" not in worker
    assert "--health-port=9090" in worker["args"]


def test_resources_requests_equal_limits_by_default(helm: Helm) -> None:
    leader = container(pod_templates(lws_of(helm))["leader"])
    assert leader["resources"]["requests"] == leader["resources"]["limits"] == {
        "cpu": "4", "memory": "64Gi", "ephemeral-storage": "8Gi",
        "nvidia.com/gpu": "4", "vpc.amazonaws.com/efa": "1",
    }


def test_cpu_limit_and_extra_resources(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm, values=(ALL_OPTIONS,))).values():
        resources = container(template)["resources"]
        assert (resources["requests"]["cpu"], resources["limits"]["cpu"]) == ("90", "120")
        for kind in ("requests", "limits"):  # extended resources and huge pages: requested and limited alike
            assert resources[kind]["hugepages-2Mi"] == "5120Mi"
            assert resources[kind]["rdma/rdma_shared_device_a"] == "1"
            assert resources[kind]["memory"] == "900Gi"


def test_placement_values(helm: Helm) -> None:
    for role, template in pod_templates(lws_of(helm, values=(ALL_OPTIONS,))).items():
        spec = template["spec"]
        affinity = spec["affinity"]
        assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == ["NVIDIA-A100-SXM4-80GB"], role  # gpu kept
        assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert "affinity" not in pod_templates(lws_of(helm, "gpu="))["leader"]["spec"]


def test_queueing_placement_and_rollout_values(helm: Helm) -> None:
    lws = lws_of(helm, "schedulerName=volcano", "priorityClassName=llm-serving", "kueue.queueName=team-a",
                 "kueue.priorityClass=production", "lws.exclusiveTopology=example.com/network-block",
                 "lws.subGroupSize=1", "lws.subGroupExclusiveTopology=example.com/nvlink-domain",
                 "lws.annotations.owner=ml", "lws.rollout.maxSurge=1", "lws.rollout.maxUnavailable=0")
    assert {k: v for k, v in lws["metadata"]["labels"].items() if k.startswith("kueue.x-k8s.io/")} == {
        "kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "production"}
    assert lws["metadata"]["annotations"] == {
        "owner": "ml", "leaderworkerset.sigs.k8s.io/exclusive-topology": "example.com/network-block",
        "leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology": "example.com/nvlink-domain"}
    assert lws["spec"]["leaderWorkerTemplate"]["subGroupPolicy"] == {"subGroupSize": 1}
    assert lws["spec"]["rolloutStrategy"] == {"type": "RollingUpdate",
                                              "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 1}}
    for template in pod_templates(lws).values():
        assert (template["spec"]["schedulerName"], template["spec"]["priorityClassName"]) == ("volcano", "llm-serving")
    plain = lws_of(helm)
    assert not any(k.startswith("kueue.") for k in plain["metadata"]["labels"])
    assert "annotations" not in plain["metadata"]
    assert "subGroupPolicy" not in plain["spec"]["leaderWorkerTemplate"]
    assert plain["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxUnavailable": 1, "maxSurge": 0}
    assert not {"schedulerName", "priorityClassName"} & set(pod_templates(plain)["leader"]["spec"])


def test_disruption_budget_covers_leaders_and_workers(helm: Helm) -> None:
    docs = helm.template()
    budget, lws = one(docs, "PodDisruptionBudget"), one(docs, "LeaderWorkerSet")
    assert budget["spec"]["maxUnavailable"] == 1
    for role in ("leader", "worker"):
        assert selector_matches(budget["spec"]["selector"]["matchLabels"], pod_labels_as_created(lws, role)), role
    other = helm.template(release="beta")
    assert not selector_matches(budget["spec"]["selector"]["matchLabels"],
                                pod_labels_as_created(one(other, "LeaderWorkerSet"), "leader"))
    assert not by_kind(helm.template(sets=("podDisruptionBudget.enabled=false",)), "PodDisruptionBudget")


def test_extra_volumes_mounts_and_init_containers(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm, values=(ALL_OPTIONS,))).values():
        spec = template["spec"]
        assert [v["name"] for v in spec["volumes"]][-1] == "local-nvme"
        assert [m["mountPath"] for m in container(template)["volumeMounts"]][-1] == "/mnt/nvme"
        assert [c["name"] for c in spec["initContainers"]] == ["stage-engines"]
    assert "initContainers" not in pod_templates(lws_of(helm))["leader"]["spec"]


def test_probe_timing_overrides_keep_what_is_asked(helm: Helm) -> None:
    leader = container(pod_templates(lws_of(helm, values=(ALL_OPTIONS,)))["leader"])
    assert leader["startupProbe"] == {"httpGet": {"path": "/healthz", "port": "launcher"}, "initialDelaySeconds": 0,
                                      "periodSeconds": 5, "timeoutSeconds": 10, "failureThreshold": 24}
    assert leader["livenessProbe"]["initialDelaySeconds"] == 5 and leader["livenessProbe"]["failureThreshold"] == 4
    worker = container(pod_templates(lws_of(helm, "probes.worker.liveness.failureThreshold=7"))["worker"])
    assert worker["livenessProbe"]["failureThreshold"] == 7
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "launcher"}


def test_common_labels_on_every_object_and_an_image_digest(helm: Helm) -> None:
    docs = helm.template(values=(ALL_OPTIONS,))
    assert all(doc["metadata"]["labels"]["cost-center"] == "ml-serving" for doc in docs)
    lws = one(docs, "LeaderWorkerSet")
    digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    for template in pod_templates(lws).values():
        assert container(template)["image"] == f"registry.example.com/triton-trtllm-lws:25.07-0.1.0@{digest}"
        assert "cost-center" not in template["metadata"]["labels"]  # pods carry podLabels only


def test_efa_only_when_requested(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm, "resources.efa=0")).values():
        resources = container(template)["resources"]
        assert "vpc.amazonaws.com/efa" not in resources["limits"]
        assert "vpc.amazonaws.com/efa" not in resources["requests"]
    for template in pod_templates(lws_of(helm, "resources.efa=32")).values():
        assert container(template)["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"


def test_volumes_model_repository_read_only_shm_and_tmp(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm, "shmSize=12Gi")).values():
        volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
        assert volumes["model-repository"]["persistentVolumeClaim"] == {"claimName": "efs-claim"}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "12Gi"}
        assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
        mounts = {mount["name"]: mount for mount in container(template)["volumeMounts"]}
        assert {name: mount["mountPath"] for name, mount in mounts.items()} == {
            "model-repository": "/var/run/models", "dshm": "/dev/shm", "tmp": "/tmp"}
        assert mounts["model-repository"]["readOnly"] is True  # model.py files are code the leader loads


def test_nsys_reports_get_their_own_volume(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm, values=(ALL_OPTIONS,))).values():
        volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
        assert volumes["nsys-reports"]["persistentVolumeClaim"] == {"claimName": "nsys-reports"}
        mounts = {mount["name"]: mount for mount in container(template)["volumeMounts"]}
        assert mounts["nsys-reports"]["mountPath"] == "/mnt/nsys" and not mounts["nsys-reports"].get("readOnly")
    plain = pod_templates(lws_of(helm, "nsys.enabled=true"))["leader"]["spec"]["volumes"]
    assert {"name": "nsys-reports", "emptyDir": {}} in plain


def test_pods_run_without_root_or_capabilities(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm)).values():
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        ctx = container(template)["securityContext"]
        assert ctx == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}}


def test_scheduling_gpu_product_tolerations_node_selector(helm: Helm) -> None:
    lws = lws_of(helm, values=(ALL_OPTIONS,))
    for template in pod_templates(lws).values():
        spec = template["spec"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"] == [{"matchExpressions": [{
            "key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}]}]
        assert spec["tolerations"][0] == {
            "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        assert spec["tolerations"][1]["key"] == "dedicated"
        assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
        assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    no_gpu_model = lws_of(helm, "gpu=")
    assert all("affinity" not in t["spec"] for t in pod_templates(no_gpu_model).values())


def test_options_become_launcher_flags(helm: Helm) -> None:
    lws = lws_of(helm, values=(ALL_OPTIONS,))
    args = container(pod_templates(lws)["leader"])["args"]
    for flag in ("--verbose", "--env=NCCL_DEBUG=INFO", "--iso8601", "--nsys",
                 "--nsys-output=/mnt/nsys", "--preflight", "--log-format=json",
                 "--env=FI_EFA_USE_DEVICE_RDMA", "--env=NCCL_PROTO",
                 "--http-port=9000", "--grpc-port=9001", "--metrics-port=9002",
                 "--health-port=9080"):
        assert flag in args
    worker = container(pod_templates(lws)["worker"])
    assert worker["args"] == ["worker", "--health-port=9080", "--log-format=json", "--verbose"]
    env_names = [item["name"] for item in worker["env"]]
    assert env_names == ["LAUNCHER_POD_UID", "HF_HOME", "NODE_NAME"]  # its uid: kubessh checks it in each exec


def test_quiet_by_default(helm: Helm) -> None:
    args = container(pod_templates(lws_of(helm))["leader"])["args"]
    assert not [arg for arg in args if arg in ("--verbose", "--nsys", "--preflight", "--iso8601")
                or "NCCL_DEBUG" in arg]


def test_service_selects_only_this_releases_leaders(helm: Helm) -> None:
    docs = helm.template()
    service, lws = one(docs, "Service"), one(docs, "LeaderWorkerSet")
    assert service["spec"]["type"] == "ClusterIP"  # Triton has no authentication: in-cluster by default
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http"), ("grpc", 8001, "grpc")]  # metrics are scraped from the pods, not served
    selector = service["spec"]["selector"]
    assert selector_matches(selector, pod_labels_as_created(lws, "leader"))
    assert selector_matches(selector, pod_labels_as_created(lws, "leader", group=1))
    assert not selector_matches(selector, pod_labels_as_created(lws, "worker"))
    assert one(helm.template(sets=("service.type=LoadBalancer",)), "Service")["spec"]["type"] == "LoadBalancer"


def test_hpa_scales_this_leaderworkerset(helm: Helm) -> None:
    docs = helm.template(values=(ALL_OPTIONS,))
    hpa, lws = one(docs, "HorizontalPodAutoscaler"), one(docs, "LeaderWorkerSet")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
        "name": lws["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "triton:queue_compute:ratio"},
        "target": {"type": "AverageValue", "averageValue": "500m"}}}]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 3600
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 600}]


def test_keda_scales_this_leaderworkerset_on_the_release_sum_per_target(helm: Helm) -> None:
    docs = helm.template(values=(ALL_OPTIONS,), sets=("autoscaling.provider=keda",
                                                      "autoscaling.keda.serverAddress=http://prom.mon:9090"))
    scaled, lws = one(docs, "ScaledObject"), one(docs, "LeaderWorkerSet")
    assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"]  # KEDA makes its own
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                                      "name": lws["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == 3600
    assert spec["triggers"] == [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
        "serverAddress": "http://prom.mon:9090", "threshold": "1",
        "query": 'sum(triton:queue_compute:ratio{namespace="serving", app_kubernetes_io_instance="alpha"}) / 500e-3'}}]


def test_hpa_defaults_suit_groups_that_load_for_many_minutes(helm: Helm) -> None:
    behavior = one(helm.template(), "HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= merged_values(TUTORIAL)["startup"]["timeoutSeconds"]
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


def test_prometheus_rule_records_the_autoscaling_metric(helm: Helm) -> None:
    rule = one(helm.template(release="alpha", namespace="serving"), "PrometheusRule")
    records = {r["record"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"] if "record" in r}
    sel = '{namespace="serving", app_kubernetes_io_instance="alpha"}'
    assert records["triton:queue_compute:ratio"] == (
        f"rate(nv_inference_queue_duration_us{sel}[1m]) / "
        f"clamp_min(rate(nv_inference_compute_infer_duration_us{sel}[1m]), 1)")
    for name, metric in (("queue", "nv_inference_queue_duration_us"),
                         ("compute_infer", "nv_inference_compute_infer_duration_us"),
                         ("request", "nv_inference_request_duration_us")):
        assert records[f"triton:{name}_duration_us:avg"] == (
            f"rate({metric}{sel}[1m]) / (rate(nv_inference_request_success{sel}[1m]) > 0)")


def test_monitoring_labels_and_endpoints(helm: Helm) -> None:
    docs = helm.template(sets=("monitoring.labels.release=kps",))
    monitor, lws = one(docs, "PodMonitor"), one(docs, "LeaderWorkerSet")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"
    endpoints = {(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {("metrics", "/metrics"), ("launcher", "/metrics")}
    assert "app.kubernetes.io/instance" in monitor["spec"]["podTargetLabels"]
    for role in ("leader", "worker"):
        labels = pod_labels_as_created(lws, role)
        assert selector_matches(monitor["spec"]["selector"]["matchLabels"], labels)
    docs = helm.template(sets=("monitoring.podMonitor.enabled=false",
                               "monitoring.prometheusRule.enabled=false"))
    assert not by_kind(docs, "PodMonitor") and not by_kind(docs, "PrometheusRule")


def test_rbac_is_minimal_and_bound_to_the_pods_account(helm: Helm) -> None:
    docs = helm.template()
    account, role, binding = (one(docs, kind) for kind in ("ServiceAccount", "Role", "RoleBinding"))
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        # the tutorial autoscales up to 2 groups of a leader and one worker: exec into those workers only
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"],
         "resourceNames": ["alpha-lws-triton-0-1", "alpha-lws-triton-1-1"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
        {"apiGroups": ["leaderworkerset.x-k8s.io"], "resources": ["leaderworkersets"], "verbs": ["get"],
         "resourceNames": ["alpha-lws-triton"]},
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "serving"}]
    for template in pod_templates(one(docs, "LeaderWorkerSet")).values():
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_exec_names_follow_the_groups_the_release_may_run(helm: Helm) -> None:
    def exec_names(*sets: str) -> list[str]:
        rules = one(helm.template(sets=sets), "Role")["rules"]
        return [name for rule in rules if rule["resources"] == ["pods/exec"] for name in rule["resourceNames"]]

    assert exec_names("autoscaling.enabled=false", "lws.replicas=1", "gpuPerNode=2") == [
        "alpha-lws-triton-0-1", "alpha-lws-triton-0-2", "alpha-lws-triton-0-3"]
    assert len(exec_names("autoscaling.maxReplicas=5")) == 5
    assert exec_names("gpuPerNode=8") == []  # a group of one pod: no exec at all


def test_exec_admission_policy_confines_the_account_to_its_own_workers(helm: Helm) -> None:
    """The policy's own pattern (CEL's matches is RE2; these patterns mean the same in Python's re)
    admits this release's worker pods and nothing of release alpha-b, whose name extends alpha's."""
    docs = helm.template()
    policy, binding = one(docs, "ValidatingAdmissionPolicy"), one(docs, "ValidatingAdmissionPolicyBinding")
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "alpha-lws-triton.serving.exec.lws-triton"
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CONNECT"]
    assert [c["expression"] for c in policy["spec"]["matchConditions"]] == [
        'request.userInfo.username == "system:serviceaccount:serving:alpha-lws-triton"']
    [validation] = policy["spec"]["validations"]
    assert 'request.namespace == "serving"' in validation["expression"]
    pattern = re.search(r'request\.name\.matches\("([^"]+)"\)', validation["expression"]).group(1)
    admitted = ["alpha-lws-triton-0-1", "alpha-lws-triton-1-1", "alpha-lws-triton-12-3"]
    refused = ["alpha-lws-triton-0", "alpha-b-lws-triton-0-1", "alpha-lws-triton-0-0", "alpha-lws-triton-01-1",
               "alpha-lws-triton-0-1-x", "x-alpha-lws-triton-0-1", "alpha-lws-triton-api"]
    assert [name for name in admitted + refused if re.fullmatch(pattern, name)] == admitted
    off = (("serviceAccount.execAdmissionPolicy=false",), ("serviceAccount.create=false", "serviceAccount.name=x"))
    for sets in off:
        assert not by_kind(helm.template(sets=sets), "ValidatingAdmissionPolicy"), sets


def test_rank_env_values_stay_out_of_every_command_line(helm: Helm) -> None:
    sets = ("rankEnv.HF_TOKEN.valueFrom.secretKeyRef.name=hf", "rankEnv.HF_TOKEN.valueFrom.secretKeyRef.key=token",
            "rankEnv.NCCL_PROTO=s3cr3t-looking-value")
    docs = helm.template(sets=sets)
    leader = container(pod_templates(one(docs, "LeaderWorkerSet"))["leader"])
    env = {item["name"]: item for item in leader["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["NCCL_PROTO"]["value"] == "s3cr3t-looking-value"
    assert {"--env=HF_TOKEN", "--env=NCCL_PROTO"} <= set(leader["args"])
    for doc in docs:
        for key, value in walk(doc):
            if key in ("args", "command"):
                assert not any("s3cr3t" in str(arg) for arg in value), doc["kind"]


def test_network_policy_admits_the_group_clients_and_monitoring(helm: Helm) -> None:
    policy = one(helm.template(sets=("networkPolicy.clients[0].namespaceSelector.matchLabels.team=gateway",)),
                 "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    group, clients, monitoring = policy["spec"]["ingress"]
    assert "ports" not in group and group["from"][0]["podSelector"]["matchLabels"] == policy["spec"]["podSelector"][
        "matchLabels"]
    assert [p["port"] for p in clients["ports"]] == [8000, 8001]
    assert clients["from"] == [{"namespaceSelector": {"matchLabels": {"team": "gateway"}}}]
    assert [p["port"] for p in monitoring["ports"]] == [8002, 8080]
    assert monitoring["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert not by_kind(helm.template(sets=("networkPolicy.enabled=false",)), "NetworkPolicy")


def test_admin_apis_are_behind_a_key_from_a_secret(helm: Helm, tmp_path: Path) -> None:
    leader = container(pod_templates(lws_of(helm, "adminApis.keySecret.name=triton-admin",
                                            "adminApis.keySecret.key=key"))["leader"])
    assert "--restricted-apis=model-repository,shared-memory,trace,logging" in leader["args"]
    env = {item["name"]: item for item in leader["env"]}
    assert env["LAUNCHER_ADMIN_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "triton-admin", "key": "key"}}
    opened = tmp_path / "open-values.yaml"
    opened.write_text("adminApis:\n  restricted: []\n")
    plain = container(pod_templates(lws_of(helm, values=(TUTORIAL, opened)))["leader"])
    assert "--restricted-apis=none" in plain["args"]
    assert "LAUNCHER_ADMIN_KEY" not in {item["name"] for item in plain["env"]}


def test_existing_service_account(helm: Helm) -> None:
    docs = helm.template(sets=("serviceAccount.create=false", "serviceAccount.name=ops-made"))
    assert not [doc for doc in docs if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for template in pod_templates(one(docs, "LeaderWorkerSet")).values():
        assert template["spec"]["serviceAccountName"] == "ops-made"


def test_pod_labels_do_not_change_with_the_chart_version(helm: Helm) -> None:
    for template in pod_templates(lws_of(helm)).values():
        labels = template["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels
