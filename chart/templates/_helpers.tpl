{{/*
Chart name, or nameOverride.
*/}}
{{- define "lws-triton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 45 | trimSuffix "-" }}
{{- end }}

{{/*
Name of every object of a release. Capped at 45 characters rather than 63:
LWS names the group's StatefulSets <name>-<group> and its pods
<name>-<group>-<worker>, and Kubernetes puts those names (plus a hash) into
label values of at most 63 characters.
*/}}
{{- define "lws-triton.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "lws-triton.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "lws-triton.labels" -}}
helm.sh/chart: {{ include "lws-triton.chart" . }}
{{ include "lws-triton.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select this release's pods, and nothing of another release.
*/}}
{{- define "lws-triton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lws-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Service account the pods run as.
*/}}
{{- define "lws-triton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lws-triton.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing service account that may get/list/watch pods and create pods/exec in this namespace" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference.
*/}}
{{- define "lws-triton.image" -}}
{{- $image := .Values.image }}
{{- $repo := required "image.repository is required: the registry/repository you pushed the image built from triton_trt-llm.containerfile to" $image.repository }}
{{- if not (or $image.tag $image.digest) }}
{{- fail "image.tag is required (or image.digest): the tag you pushed the image built from triton_trt-llm.containerfile as; the chart's own version is no tag of that image" }}
{{- end }}
{{- $repo }}{{ with $image.tag }}:{{ . }}{{ end }}{{ with $image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/*
Pods in one group: tensor x pipeline / gpuPerNode. Fails unless that is a
positive whole number.
*/}}
{{- define "lws-triton.groupSize" -}}
{{- $tp := int .Values.tensorrtLLM.parallelism.tensor }}
{{- $pp := int .Values.tensorrtLLM.parallelism.pipeline }}
{{- $gpus := int .Values.gpuPerNode }}
{{- if or (lt $tp 1) (lt $pp 1) (lt $gpus 1) }}
{{- fail (printf "tensorrtLLM.parallelism.tensor (%d), tensorrtLLM.parallelism.pipeline (%d) and gpuPerNode (%d) must all be at least 1" $tp $pp $gpus) }}
{{- end }}
{{- $world := mul $tp $pp }}
{{- if ne (mod $world $gpus) 0 }}
{{- fail (printf "group size is not a whole number of pods: tensorrtLLM.parallelism.tensor (%d) x pipeline (%d) = %d GPUs, which gpuPerNode (%d) does not divide; set gpuPerNode to a divisor of %d or rebuild the engines for a multiple of %d GPUs" $tp $pp $world $gpus $world $gpus) }}
{{- end }}
{{- div $world $gpus }}
{{- end }}

{{/*
The LeaderWorkerSet's annotations: lws.annotations, and LWS's exclusive
placement ones from lws.exclusiveTopology and lws.subGroupExclusiveTopology.
*/}}
{{- define "lws-triton.lwsAnnotations" -}}
{{- $annotations := deepCopy .Values.lws.annotations }}
{{- with .Values.lws.exclusiveTopology }}
{{- $_ := set $annotations "leaderworkerset.sigs.k8s.io/exclusive-topology" . }}
{{- end }}
{{- with .Values.lws.subGroupExclusiveTopology }}
{{- $_ := set $annotations "leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology" . }}
{{- end }}
{{- toYaml $annotations }}
{{- end }}

{{/*
Names of the worker pods of every group the release may run, as a YAML list
(empty when a group is its leader alone).
*/}}
{{- define "lws-triton.workerPodNames" -}}
{{- $fullname := include "lws-triton.fullname" . }}
{{- $size := int (include "lws-triton.groupSize" .) }}
{{- $groups := ternary (int .Values.autoscaling.maxReplicas) (int .Values.lws.replicas) .Values.autoscaling.enabled }}
{{- $names := list }}
{{- range $group := until $groups }}
{{- range $worker := untilStep 1 $size 1 }}
{{- $names = append $names (printf "%s-%d-%d" $fullname $group $worker) }}
{{- end }}
{{- end }}
{{- toYaml $names }}
{{- end }}

{{/*
Checks of values that the schema cannot express. Rendered for its failures
only; prints nothing.
*/}}
{{- define "lws-triton.validate" -}}
{{- $fullname := include "lws-triton.fullname" . }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) }}
{{- fail (printf "object name %q is not a DNS-1035 label (LWS names its headless Service after the LeaderWorkerSet): it may hold only lowercase letters, digits and '-' (no '.' or '_'), start with a letter and end with a letter or digit; choose such a release name (e.g. %s) or set fullnameOverride" $fullname (regexReplaceAll "^[^a-z]+" (regexReplaceAll "[^a-z0-9-]" (lower .Release.Name) "-") "")) }}
{{- end }}
{{- $_ := include "lws-triton.groupSize" . }}
{{- $_ := include "lws-triton.image" . }}
{{- $_ := include "lws-triton.serviceAccountName" . }}
{{- $repo := .Values.modelRepository }}
{{- $_ := required "modelRepository.persistentVolumeClaim is required: the name of the ReadWriteMany PersistentVolumeClaim that holds the model repository and engines" $repo.persistentVolumeClaim }}
{{- $path := required "modelRepository.path is required: the Triton model repository directory, under modelRepository.mountPath" $repo.path }}
{{- $mount := trimSuffix "/" $repo.mountPath }}
{{- if not (hasPrefix (printf "%s/" $mount) $path) }}
{{- fail (printf "modelRepository.path (%s) must be a directory under modelRepository.mountPath (%s), where the claim %s is mounted" $path $repo.mountPath $repo.persistentVolumeClaim) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.canary.model (ge (int .Values.canary.deadlineSeconds) (int .Values.canary.intervalSeconds)) }}
{{- fail (printf "canary.deadlineSeconds (%d) must be shorter than canary.intervalSeconds (%d): canaries never overlap" (int .Values.canary.deadlineSeconds) (int .Values.canary.intervalSeconds)) }}
{{- end }}
{{- $stop := add (int .Values.drain.delaySeconds) (int .Values.drain.timeoutSeconds) 10 }}
{{- if gt $stop (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) is shorter than a drained stop: drain.delaySeconds (%d) + drain.timeoutSeconds (%d) + 10 s for the ranks to stop = %d; raise terminationGracePeriodSeconds or shorten the drain" (int .Values.terminationGracePeriodSeconds) (int .Values.drain.delaySeconds) (int .Values.drain.timeoutSeconds) $stop) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- $window := int (dig "scaleDown" "stabilizationWindowSeconds" 300 .Values.autoscaling.behavior) }}
{{- $load := min (int .Values.startup.timeoutSeconds) 3600 }}
{{- if lt $window $load }}
{{- fail (printf "autoscaling.behavior.scaleDown.stabilizationWindowSeconds (%d) is shorter than a group may take to load (startup.timeoutSeconds: %d, counted up to Kubernetes' 3600 s maximum): the HPA could remove groups sooner than one loads; raise the window or lower startup.timeoutSeconds" $window (int .Values.startup.timeoutSeconds)) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.resources.extra }}
{{- if has $name (list "cpu" "memory" "ephemeral-storage" "nvidia.com/gpu" "vpc.amazonaws.com/efa") }}
{{- fail (printf "resources.extra.%s: the chart sets %s from its own value (resources.cpu/cpuLimit, resources.memory, resources.ephemeralStorage, gpuPerNode, resources.efa); set it there, extra is for other resources" $name $name) }}
{{- end }}
{{- end }}
{{- $size := int (include "lws-triton.groupSize" .) }}
{{- with int .Values.lws.subGroupSize }}
{{- if or (gt . $size) (and (ne (mod $size .) 0) (ne (mod (sub $size 1) .) 0)) }}
{{- fail (printf "lws.subGroupSize (%d) must divide the group size (%d pods) or the group size minus its leader (%d): LWS makes equal subgroups, the leader joining the first when it is the extra pod; choose a divisor of %d or %d" . $size (sub $size 1) $size (sub $size 1)) }}
{{- end }}
{{- end }}
{{- if and .Values.lws.subGroupExclusiveTopology (not (int .Values.lws.subGroupSize)) }}
{{- fail (printf "lws.subGroupExclusiveTopology (%s) places subgroups, but lws.subGroupSize is 0 (no subgroups): set lws.subGroupSize to the pods that share one %s domain" .Values.lws.subGroupExclusiveTopology .Values.lws.subGroupExclusiveTopology) }}
{{- end }}
{{- if and .Values.gpu .Values.affinity.nodeAffinity }}
{{- fail (printf "gpu (%s) and affinity.nodeAffinity are both set: the chart turns gpu into node affinity; put the nvidia.com/gpu.product term into affinity.nodeAffinity and leave gpu empty, or drop affinity.nodeAffinity" .Values.gpu) }}
{{- end }}
{{- if and .Values.nsys.enabled (hasPrefix (printf "%s/" (trimSuffix "/" $repo.mountPath)) (printf "%s/" (trimSuffix "/" .Values.nsys.outputPath))) }}
{{- fail (printf "nsys.outputPath (%s) lies in the model repository's mount (%s): reports get their own volume (nsys.persistentVolumeClaim); choose a path outside it" .Values.nsys.outputPath $repo.mountPath) }}
{{- end }}
{{- $ports := list (int .Values.ports.http) (int .Values.ports.grpc) (int .Values.ports.metrics) (int .Values.ports.launcher) }}
{{- if ne (len (uniq $ports)) 4 }}
{{- fail (printf "ports.http, ports.grpc, ports.metrics and ports.launcher must differ; got %v" $ports) }}
{{- end }}
{{- end }}

{{/*
Arguments of the leader container: `launcher leader ...`, as a YAML list.
The group key and namespace come from the downward API (env), the group size
from LWS itself (LWS_GROUP_SIZE).
*/}}
{{- define "lws-triton.leaderArgs" -}}
{{- $v := .Values }}
{{- $args := list "leader"
  (printf "--tp=%d" (int $v.tensorrtLLM.parallelism.tensor))
  (printf "--pp=%d" (int $v.tensorrtLLM.parallelism.pipeline))
  (printf "--gpus-per-pod=%d" (int $v.gpuPerNode))
  (printf "--model-repo=%s" $v.modelRepository.path)
  (printf "--model=%s" $v.modelRepository.model)
  (printf "--http-port=%d" (int $v.ports.http))
  (printf "--grpc-port=%d" (int $v.ports.grpc))
  (printf "--metrics-port=%d" (int $v.ports.metrics))
  (printf "--health-port=%d" (int $v.ports.launcher))
  (printf "--startup-timeout=%d" (int $v.startup.timeoutSeconds))
  (printf "--discovery-timeout=%d" (int $v.startup.discoveryTimeoutSeconds))
  (printf "--drain-delay=%d" (int $v.drain.delaySeconds))
  (printf "--drain-timeout=%d" (int $v.drain.timeoutSeconds))
  (printf "--canary-model=%s" $v.canary.model)
  (printf "--canary-inputs=%s" $v.canary.inputs)
  (printf "--canary-interval=%d" (int $v.canary.intervalSeconds))
  (printf "--canary-deadline=%d" (int $v.canary.deadlineSeconds))
  (printf "--canary-misses=%d" (int $v.canary.misses))
  (printf "--on-permanent-error=%s" $v.restarts.onPermanentError)
  (printf "--restart-window=%d" (int $v.restarts.windowSeconds))
  (printf "--restart-backoff=%d" (int $v.restarts.backoffSeconds))
  (printf "--restart-backoff-max=%d" (int $v.restarts.backoffMaxSeconds))
  (printf "--log-format=%s" $v.logging.format)
  (printf "--restricted-apis=%s" (default "none" (join "," $v.adminApis.restricted))) }}
{{- if $v.logging.verbose }}
{{- $args = concat $args (list "--verbose" "--env=NCCL_DEBUG=INFO") }}
{{- end }}
{{- if $v.logging.iso8601 }}
{{- $args = append $args "--iso8601" }}
{{- end }}
{{- if $v.nsys.enabled }}
{{- $out := required "nsys.outputPath is required when nsys.enabled is true" $v.nsys.outputPath }}
{{- $args = concat $args (list "--nsys" (printf "--nsys-output=%s" $out) (printf "--nsys-binary=%s" $v.nsys.binary)) }}
{{- end }}
{{- if $v.preflight.enabled }}
{{- $args = concat $args (list "--preflight" (printf "--preflight-deadline=%d" (int $v.preflight.deadlineSeconds))) }}
{{- end }}
{{- range $name, $_ := $v.rankEnv }}
{{- $args = append $args (printf "--env=%s" $name) }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/*
Arguments of the worker container: `launcher worker ...`, as a YAML list.
*/}}
{{- define "lws-triton.workerArgs" -}}
{{- $v := .Values }}
{{- $args := list "worker"
  (printf "--health-port=%d" (int $v.ports.launcher))
  (printf "--log-format=%s" $v.logging.format) }}
{{- if $v.logging.verbose }}
{{- $args = append $args "--verbose" }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/*
Pod template metadata; pass (dict "ctx" $ "component" "leader|worker").
Pods carry only the selector labels, their role and podLabels: a label that
changes with the chart version would restart every group on each upgrade.
*/}}
{{- define "lws-triton.podMetadata" -}}
{{- $ctx := .ctx -}}
labels:
  {{- include "lws-triton.selectorLabels" $ctx | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with $ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $ctx.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The parts of the pod spec leader and worker share: scheduling, identity,
volumes. Pass the root context.
*/}}
{{- define "lws-triton.podCommon" -}}
serviceAccountName: {{ include "lws-triton.serviceAccountName" . }}
terminationGracePeriodSeconds: {{ int .Values.terminationGracePeriodSeconds }}
{{- with .Values.schedulerName }}
schedulerName: {{ . }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or .Values.gpu .Values.affinity }}
affinity:
  {{- with .Values.affinity }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- if .Values.gpu }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: nvidia.com/gpu.product
              operator: In
              values:
                - {{ .Values.gpu | quote }}
  {{- end }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
tolerations:
  - key: nvidia.com/gpu
    operator: Exists
    effect: NoSchedule
  {{- with .Values.tolerations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumes:
  - name: model-repository
    persistentVolumeClaim:
      claimName: {{ .Values.modelRepository.persistentVolumeClaim }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .Values.shmSize }}
  # the root filesystem is read-only: Open MPI's session directories and the
  # launcher's hostfile go here
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  {{- if .Values.nsys.enabled }}
  - name: nsys-reports
    {{- if .Values.nsys.persistentVolumeClaim }}
    persistentVolumeClaim:
      claimName: {{ .Values.nsys.persistentVolumeClaim }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The parts of the container leader and worker share. Pass the root context.
*/}}
{{- define "lws-triton.containerCommon" -}}
image: {{ include "lws-triton.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command:
  - launcher
# The launcher's last log lines (its one-line error) become the container's
# termination message: `kubectl describe pod` shows why it exited.
terminationMessagePolicy: FallbackToLogsOnError
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  requests:
    cpu: {{ .Values.resources.cpu | quote }}
    {{- include "lws-triton.resourceList" . | nindent 4 }}
  limits:
    cpu: {{ default .Values.resources.cpu .Values.resources.cpuLimit | quote }}
    {{- include "lws-triton.resourceList" . | nindent 4 }}
volumeMounts:
  - name: model-repository
    mountPath: {{ .Values.modelRepository.mountPath }}
    readOnly: {{ .Values.modelRepository.readOnly }}
  - name: dshm
    mountPath: /dev/shm
  - name: tmp
    mountPath: /tmp
  {{- if .Values.nsys.enabled }}
  - name: nsys-reports
    mountPath: {{ .Values.nsys.outputPath }}
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Resources of one pod other than CPU; requests equal limits (GPUs, EFA, other
extended resources and huge pages must).
*/}}
{{- define "lws-triton.resourceList" -}}
memory: {{ .Values.resources.memory | quote }}
{{- with .Values.resources.ephemeralStorage }}
ephemeral-storage: {{ . | quote }}
{{- end }}
nvidia.com/gpu: {{ int .Values.gpuPerNode | quote }}
{{- if gt (int .Values.resources.efa) 0 }}
vpc.amazonaws.com/efa: {{ int .Values.resources.efa | quote }}
{{- end }}
{{- range $name, $quantity := .Values.resources.extra }}
{{ $name }}: {{ $quantity | quote }}
{{- end }}
{{- end }}

{{/*
Seconds the launcher may spend before it gives up on a start: discovery (the
pods appear), readiness (each can be exec'd into; the same timeout), the
preflight's deadline when on, and startup (rank 0 ready). Its own timeouts end
a start, not the kubelet's probes.
*/}}
{{- define "lws-triton.launchBudget" -}}
{{- $discovery := int .Values.startup.discoveryTimeoutSeconds }}
{{- $preflight := ternary (int .Values.preflight.deadlineSeconds) 0 .Values.preflight.enabled }}
{{- add $discovery $discovery $preflight (int .Values.startup.timeoutSeconds) }}
{{- end }}

{{/*
Selector labels plus the label LWS puts on every group's leader pod.
*/}}
{{- define "lws-triton.leaderSelectorLabels" -}}
{{ include "lws-triton.selectorLabels" . }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end }}

{{/*
Whether the monitoring.coreos.com/v1 API (Prometheus operator) is served.
*/}}
{{- define "lws-triton.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
PromQL label matchers for this release's series (see the PodMonitor's podTargetLabels).
*/}}
{{- define "lws-triton.promSelector" -}}
{{- printf "namespace=%q, app_kubernetes_io_instance=%q" .Release.Namespace .Release.Name }}
{{- end }}
