{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "optiserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The RayService name (and prefix of everything else). KubeRay appends "-serve-svc",
     "-head-svc" and "-raycluster-xxxxx", so keep it short. */}}
{{- define "optiserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "optiserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "optiserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optiserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "optiserve.labels" -}}
helm.sh/chart: {{ include "optiserve.chart" . }}
{{ include "optiserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: optiserve
{{- end -}}

{{- define "optiserve.controllerName" -}}
{{- printf "%s-rollout-controller" (include "optiserve.fullname" .) -}}
{{- end -}}

{{- define "optiserve.stateConfigMap" -}}
{{- default (printf "%s-rollout-state" (include "optiserve.fullname" .)) .Values.rolloutController.stateConfigMap -}}
{{- end -}}

{{/* The ConfigMap holding one model's rollout state; argument: (list $ model). Exactly
     optiserve.rollout.store.configmap_name: "<prefix>-<model>" when the model name is a valid
     Kubernetes name as it is, else "<prefix>-<sanitized>-<first 8 hex of sha256(model)>". */}}
{{- define "optiserve.modelStateConfigMap" -}}
{{- $prefix := include "optiserve.stateConfigMap" (index . 0) -}}
{{- $model := index . 1 | toString -}}
{{- if regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" $model -}}
{{- printf "%s-%s" $prefix $model -}}
{{- else -}}
{{- $clean := regexReplaceAll "[^a-z0-9.-]" (lower $model) "-" | trimAll "-." | default "model" -}}
{{- printf "%s-%s-%s" $prefix $clean (sha256sum $model | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/* The split the rollout controller owns for a model (owned_split of the RolloutState in the
     model's state ConfigMap, key state.json), or an empty dict: always empty under
     `helm template` and on a first install, where lookup finds nothing. Argument: (list $ model). */}}
{{- define "optiserve.ownedSplit" -}}
{{- $root := index . 0 -}}
{{- $model := index . 1 -}}
{{- $name := include "optiserve.modelStateConfigMap" (list $root $model) -}}
{{- $cm := lookup "v1" "ConfigMap" $root.Release.Namespace $name -}}
{{- $owned := dict -}}
{{- $raw := "" -}}
{{- if $cm -}}{{- $raw = (($cm.data | default dict) | dig "state.json" "") -}}{{- end -}}
{{- if $raw -}}
{{- $state := fromJson $raw -}}
{{- if hasKey $state "Error" -}}
{{- fail (printf "ConfigMap %s/%s: state.json is not JSON (%s); fix it or delete it to hand model %s's traffic split back to values" $root.Release.Namespace $name $state.Error $model) -}}
{{- end -}}
{{- if $state.owned_split -}}{{- $owned = $state.owned_split -}}{{- end -}}
{{- end -}}
{{- toJson $owned -}}
{{- end -}}

{{/* An application from a model's state ConfigMap, checked before it enters serveConfigV2:
     whoever can write ConfigMaps in the namespace can write the state, and an application's
     import_path or runtime_env is code Ray runs. It must be optiserve's own version application
     of this model in this release's repository, with known fields only (those
     serving.config.build_serve_config and the rollout controller write). Argument:
     (list $ model application). */}}
{{- define "optiserve.checkOwnedApp" -}}
{{- $root := index . 0 -}}
{{- $model := index . 1 | toString -}}
{{- $app := index . 2 -}}
{{- $where := printf "ConfigMap %s/%s: state.json owned_split application %q" $root.Release.Namespace (include "optiserve.modelStateConfigMap" (list $root $model)) ($app.name | default "?" | toString) -}}
{{- $fix := "; the chart accepts optiserve's own version applications only (delete the ConfigMap to hand the split back to values)" -}}
{{- if contains "runtime_env" (toJson $app) -}}{{- fail (printf "%s: runtime_env is not allowed%s" $where $fix) -}}{{- end -}}
{{- range $k, $_ := $app -}}
{{- if not (has $k (list "name" "route_prefix" "import_path" "args" "deployments")) -}}{{- fail (printf "%s: unknown field %s%s" $where $k $fix) -}}{{- end -}}
{{- end -}}
{{- if ne (toString $app.import_path) "serving.app:version_app" -}}{{- fail (printf "%s: import_path %q is not serving.app:version_app%s" $where (toString $app.import_path) $fix) -}}{{- end -}}
{{- if not (kindIs "invalid" $app.route_prefix) -}}{{- fail (printf "%s: route_prefix must be null%s" $where $fix) -}}{{- end -}}
{{- $args := $app.args | default dict -}}
{{- range $k, $_ := $args -}}
{{- if not (has $k (list "repository" "model" "version")) -}}{{- fail (printf "%s: unknown field args.%s%s" $where $k $fix) -}}{{- end -}}
{{- end -}}
{{- if ne (toString $args.repository) (toString $root.Values.modelRepository.path) -}}{{- fail (printf "%s: args.repository %q is not %s%s" $where (toString $args.repository) $root.Values.modelRepository.path $fix) -}}{{- end -}}
{{- if ne (toString $args.model) $model -}}{{- fail (printf "%s: args.model %q is not %s%s" $where (toString $args.model) $model $fix) -}}{{- end -}}
{{- $name := printf "%s-v%d" $model (int $args.version) -}}
{{- if or (le (int $args.version) 0) (ne (toString $app.name) $name) -}}{{- fail (printf "%s: name and args.version disagree (want %s)%s" $where $name $fix) -}}{{- end -}}
{{- if ne (len ($app.deployments | default list)) 1 -}}{{- fail (printf "%s: deployments must hold exactly one deployment%s" $where $fix) -}}{{- end -}}
{{- $d := first $app.deployments -}}
{{- range $k, $_ := $d -}}
{{- if not (has $k (list "name" "num_replicas" "autoscaling_config" "max_ongoing_requests" "max_surge_percent" "ray_actor_options" "logging_config" "user_config")) -}}{{- fail (printf "%s: unknown field deployments[0].%s%s" $where $k $fix) -}}{{- end -}}
{{- end -}}
{{- if ne (toString $d.name) $name -}}{{- fail (printf "%s: deployments[0].name must be %s%s" $where $name $fix) -}}{{- end -}}
{{- range $k, $_ := ($d.ray_actor_options | default dict) -}}
{{- if not (has $k (list "num_cpus" "num_gpus" "memory" "resources")) -}}{{- fail (printf "%s: unknown field deployments[0].ray_actor_options.%s%s" $where $k $fix) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* The rollout commands' target flags (controller, start, status). */}}
{{/* KubeRay's serving Service for a RayService. */}}
{{- define "optiserve.serveService" -}}
{{- printf "%s-serve-svc" (include "optiserve.fullname" .) -}}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------- */}}
{{/* argument: (list image defaultTag [defaultRepository]); an empty repository takes the
     default one (image.repository for the GPU, init and controller images) */}}
{{- define "optiserve.imageRef" -}}
{{- $img := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- $repo := $img.repository -}}
{{- if and (not $repo) (gt (len .) 2) -}}{{- $repo = index . 2 -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $defaultTag $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "optiserve.image" -}}
{{- include "optiserve.imageRef" (list .Values.image (printf "%s-cpu" .Chart.AppVersion)) -}}
{{- end -}}

{{- define "optiserve.gpuImage" -}}
{{- include "optiserve.imageRef" (list .Values.gpuImage (printf "%s-gpu" .Chart.AppVersion) .Values.image.repository) -}}
{{- end -}}

{{/* The serve config (serveConfigV2) ---------------------------------------------------------
     Exactly the layout serving.config.build_serve_config produces (tests/deploy checks the two
     agree and that serving.config.validate_serve_config accepts it):
     - application "optiserve" (route /, serving.app:gateway_app) with deployment "gateway" whose
       user_config lists the models, their versions' batching and the traffic split;
     - one application "<model>-v<version>" (no route, serving.app:version_app) per version.
     Once the rollout controller owns a model's split (its state ConfigMap has an owned_split,
     found by lookup on install/upgrade), the render keeps it: stable/canary/canary_weight/shadow
     come from the owned route, the versions are values' plus the owned route's (values' batching
     wins), and the controller's own version applications are kept for versions values lack. */}}
{{- define "optiserve.serveConfig" -}}
{{- $root := . -}}
{{- $repo := .Values.modelRepository.path -}}
{{- $routes := dict -}}
{{- $versionApps := list -}}
{{- range $model, $m := .Values.serve.models -}}
{{- $versions := dict -}}
{{- $highest := 0 -}}
{{- range $key, $v := $m.versions -}}
{{- $version := atoi $key -}}
{{- if gt $version $highest -}}{{- $highest = $version -}}{{- end -}}
{{- $autoscaling := $v.autoscaling | default dict -}}
{{- $replicas := int (ternary ($autoscaling.max_replicas | default 1) ($v.replicas | default 1) (not (empty $autoscaling))) -}}
{{- /* two batches in flight per lane of each model replica: one computing, the next one ready.
       Lanes as serving.config.lanes_of reads them: runtime.lanes, else 1 with
       runtime.intra_op_threads, else one per reserved CPU (ONNX Runtime on CPU) */ -}}
{{- $runtime := $v.runtime | default dict -}}
{{- $cpus := ternary 1 $v.numCpus (kindIs "invalid" $v.numCpus) -}}
{{- $lanes := 1 -}}
{{- if $runtime.lanes -}}{{- $lanes = int $runtime.lanes -}}
{{- else if not $runtime.intra_op_threads -}}{{- $lanes = max 1 (int (ceil (float64 $cpus))) -}}
{{- end -}}
{{- $batching := merge (deepCopy ($v.batching | default dict)) (dict "max_inflight_batches" (mul 2 $replicas $lanes)) -}}
{{- $_ := set $versions (toString $version) $batching -}}
{{- $name := printf "%s-v%d" $model $version -}}
{{- $actor := dict "num_cpus" (ternary 1 $v.numCpus (kindIs "invalid" $v.numCpus)) -}}
{{- if $v.numGpus -}}{{- $_ := set $actor "num_gpus" $v.numGpus -}}{{- end -}}
{{- $deployment := dict "name" $name "max_ongoing_requests" ($v.maxOngoingRequests | default 16) "ray_actor_options" $actor "logging_config" (dict "enable_access_log" false) "user_config" ($v.runtime | default dict) -}}
{{- if $autoscaling -}}
{{- $_ := set $deployment "autoscaling_config" $autoscaling -}}
{{- else -}}
{{- $_ := set $deployment "num_replicas" ($v.replicas | default 1) -}}
{{- end -}}
{{- $versionApps = append $versionApps (dict "name" $name "route_prefix" nil "import_path" "serving.app:version_app" "args" (dict "repository" $repo "model" $model "version" $version) "deployments" (list $deployment)) -}}
{{- end -}}
{{- $route := dict "versions" $versions "stable" (ternary $m.stable $highest (not (kindIs "invalid" $m.stable))) -}}
{{- if not (kindIs "invalid" $m.canary) -}}
{{- $_ := set $route "canary" $m.canary -}}
{{- $_ := set $route "canary_weight" ($m.canaryWeight | default 0) -}}
{{- $_ := set $route "shadow" ($m.shadow | default 0) -}}
{{- end -}}
{{- $owned := include "optiserve.ownedSplit" (list $root $model) | fromJson -}}
{{- if $owned -}}
{{- /* the controller's split replaces values' one; its versions join values' (values' batching
       wins) and its applications come back for the versions values do not declare */ -}}
{{- $ownedRoute := $owned.route | default dict -}}
{{- range $key, $batching := ($ownedRoute.versions | default dict) -}}
{{- if not (hasKey $versions $key) -}}{{- $_ := set $versions $key $batching -}}{{- end -}}
{{- end -}}
{{- $declared := list -}}
{{- range $key, $v := $m.versions -}}{{- $declared = append $declared (printf "%s-v%d" $model (atoi $key)) -}}{{- end -}}
{{- range ($owned.applications | default list) -}}
{{- include "optiserve.checkOwnedApp" (list $root $model .) -}}
{{- if not (has .name $declared) -}}{{- $versionApps = append $versionApps . -}}{{- end -}}
{{- end -}}
{{- $route = dict "versions" $versions -}}
{{- range list "stable" "canary" "canary_weight" "shadow" -}}
{{- if hasKey $ownedRoute . -}}{{- $_ := set $route . (index $ownedRoute .) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $m.stickyHeader -}}
{{- $_ := set $route "sticky_header" $m.stickyHeader -}}
{{- end -}}
{{- $_ := set $routes $model $route -}}
{{- end -}}
{{- $gatewayConfig := dict "models" $routes -}}
{{- if .Values.serve.gateway.maxBodyBytes -}}
{{- $_ := set $gatewayConfig "max_body_bytes" .Values.serve.gateway.maxBodyBytes -}}
{{- end -}}
{{- /* one gateway replica per serving pod: each worker pod offers one optiserve_gateway */ -}}
{{- $pods := 0 -}}
{{- range (include "optiserve.workerGroups" . | fromJson).groups -}}{{- $pods = add $pods (int .replicas) -}}{{- end -}}
{{- $gatewayReplicas := ternary $pods .Values.serve.gateway.replicas (kindIs "invalid" .Values.serve.gateway.replicas) -}}
{{- $maxPods := 0 -}}
{{- range (include "optiserve.workerGroups" . | fromJson).groups -}}{{- $maxPods = add $maxPods (int (max .replicas .maxReplicas)) -}}{{- end -}}
{{- if gt (int $gatewayReplicas) (int $maxPods) -}}
{{- fail (printf "serve.gateway.replicas (%d) is more than the worker pods can ever be (%d): each pod runs one gateway replica" (int $gatewayReplicas) (int $maxPods)) -}}
{{- end -}}
{{- $s := .Values.serve.settings -}}
{{- $grace := add (int (index $s "http_drain_accept_s")) (int (index $s "http_drain_timeout_s")) 5 -}}
{{- $gatewayDeployment := dict "name" "gateway" "num_replicas" (int $gatewayReplicas) "max_ongoing_requests" .Values.serve.gateway.maxOngoingRequests "ray_actor_options" (dict "num_cpus" .Values.serve.gateway.numCpus "resources" (dict "optiserve_gateway" 1)) "graceful_shutdown_timeout_s" $grace "logging_config" (dict "enable_access_log" false) "user_config" $gatewayConfig -}}
{{- $gateway := dict "name" "optiserve" "route_prefix" nil "import_path" "serving.app:gateway_app" "args" (dict "repository" $repo) "deployments" (list $gatewayDeployment) -}}
{{- $doc := dict "proxy_location" "Disabled" "http_options" (dict "host" "0.0.0.0" "port" .Values.serve.port) "applications" (prepend $versionApps $gateway) -}}
{{- toYaml $doc -}}
{{- end -}}

{{/* Pods ------------------------------------------------------------------------------------- */}}
{{- define "optiserve.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "optiserve.securityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* The image of the model init steps (verify-models): the light init image. */}}
{{- define "optiserve.initImage" -}}
{{- include "optiserve.imageRef" (list .Values.initImage (printf "%s-init" .Chart.AppVersion) .Values.image.repository) -}}
{{- end -}}

{{/* The rollout controller's image: the CLI with the controller's extra only. */}}
{{- define "optiserve.controllerImage" -}}
{{- include "optiserve.imageRef" (list .Values.controllerImage (printf "%s-controller" .Chart.AppVersion) .Values.image.repository) -}}
{{- end -}}

{{/* The Secret holding Ray's authentication token (key auth_token). */}}
{{- define "optiserve.authSecret" -}}
{{- default (printf "%s-ray-auth" (include "optiserve.fullname" .)) .Values.ray.auth.secretName -}}
{{- end -}}

{{/* What must exist before the install, checked with lookup where the chart is rendered against
     a cluster that serves KubeRay's ray.io/v1 (install, upgrade, --dry-run=server; `helm
     template` has no cluster and skips it): the Ray token Secret (KubeRay >= 1.6 creates none
     when secretName is set), the models PVC, the Secrets the values name. A missing one would
     leave pods in CreateContainerConfigError or Pending; the render fails instead, naming the
     fix. checkPrerequisites: false turns it off (tools that render without reading the
     cluster, like Argo CD). */}}
{{- define "optiserve.checkPrerequisites" -}}
{{- if and .Values.checkPrerequisites (.Capabilities.APIVersions.Has "ray.io/v1/RayService") -}}
{{- $ns := .Release.Namespace -}}
{{- if .Values.ray.auth.enabled -}}
{{- $name := include "optiserve.authSecret" . -}}
{{- $secret := lookup "v1" "Secret" $ns $name -}}
{{- if not $secret -}}
{{- fail (printf "Secret %s/%s (Ray's token, key auth_token) does not exist: KubeRay creates none when the chart names it. Create it first: kubectl -n %s create secret generic %s --from-literal=auth_token=\"$(openssl rand -hex 32)\" (or set ray.auth.secretName, or checkPrerequisites=false)" $ns $name $ns $name) -}}
{{- end -}}
{{- if not (hasKey ($secret.data | default dict) "auth_token") -}}
{{- fail (printf "Secret %s/%s has no key auth_token (Ray's token): add it, e.g. kubectl -n %s create secret generic %s --from-literal=auth_token=\"$(openssl rand -hex 32)\" --dry-run=client -o yaml | kubectl apply -f -" $ns $name $ns $name) -}}
{{- end -}}
{{- end -}}
{{- $mr := .Values.modelRepository -}}
{{- if eq $mr.source "pvc" -}}
{{- if not (lookup "v1" "PersistentVolumeClaim" $ns $mr.pvc.claimName) -}}
{{- fail (printf "PersistentVolumeClaim %s/%s (the model repository, modelRepository.pvc.claimName) does not exist: create it with the published models (optiserve optimize --publish), or set modelRepository.source=objectStorage" $ns $mr.pvc.claimName) -}}
{{- end -}}
{{- else if $mr.objectStorage.credentialsSecret -}}
{{- if not (lookup "v1" "Secret" $ns $mr.objectStorage.credentialsSecret) -}}
{{- fail (printf "Secret %s/%s (modelRepository.objectStorage.credentialsSecret) does not exist: create it with the copier's credentials" $ns $mr.objectStorage.credentialsSecret) -}}
{{- end -}}
{{- end -}}
{{- $ft := .Values.ray.gcsFaultTolerance -}}
{{- if $ft.enabled -}}
{{- range $what, $ref := dict "redisPassword" $ft.redisPassword "redisUsername" $ft.redisUsername -}}
{{- if $ref.secretName -}}
{{- $s := lookup "v1" "Secret" $ns $ref.secretName -}}
{{- if not (hasKey (($s | default dict).data | default dict) $ref.key) -}}
{{- fail (printf "Secret %s/%s with key %s (ray.gcsFaultTolerance.%s) does not exist: create it before installing" $ns $ref.secretName $ref.key $what) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Prometheus that scrapes this release, as JSON {labels, namespace}: labels every monitor
     and rule carries so it selects them, and its namespace (the controller's default URL, the
     metrics NetworkPolicy). monitoring.selectorLabels when set; else, rendering against a
     cluster that serves monitoring.coreos.com/v1 Prometheus, the first Prometheus found
     (lookup): the matchLabels of its ServiceMonitor, PodMonitor and rule selectors; else
     kube-prometheus-stack's default selector for the release monitoring.prometheus.release in
     monitoring.prometheus.namespace. */}}
{{- define "optiserve.prometheus" -}}
{{- $p := .Values.monitoring.prometheus -}}
{{- $out := dict "labels" (dict "release" $p.release) "namespace" $p.namespace -}}
{{- if and $p.discover (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/Prometheus") -}}
{{- $found := (lookup "monitoring.coreos.com/v1" "Prometheus" "" "").items | default list -}}
{{- if $found -}}
{{- $prom := first $found -}}
{{- $labels := dict -}}
{{- range list "serviceMonitorSelector" "podMonitorSelector" "ruleSelector" -}}
{{- $labels = merge $labels ((index ($prom.spec | default dict) .) | default dict | dig "matchLabels" dict) -}}
{{- end -}}
{{- $out = dict "labels" $labels "namespace" $prom.metadata.namespace -}}
{{- end -}}
{{- end -}}
{{- with .Values.monitoring.selectorLabels -}}{{- $_ := set $out "labels" . -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "optiserve.prometheusUrl" -}}
{{- $ns := (include "optiserve.prometheus" . | fromJson).namespace -}}
{{- default (printf "http://prometheus-operated.%s.svc:9090" $ns) .Values.rolloutController.prometheusUrl -}}
{{- end -}}

{{/* Who may scrape the metrics ports: networkPolicy.metricsFrom, or the Prometheus pods of the
     Prometheus' namespace. */}}
{{- define "optiserve.metricsFrom" -}}
{{- if .Values.networkPolicy.metricsFrom -}}
{{- toYaml .Values.networkPolicy.metricsFrom -}}
{{- else -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ (include "optiserve.prometheus" . | fromJson).namespace }}
  podSelector:
    matchLabels:
      app.kubernetes.io/name: prometheus
{{- end -}}
{{- end -}}

{{/* Egress peers for "anywhere outside the cluster but the cloud metadata endpoints" (link-local
     169.254.0.0/16 with AWS', GCP's and Azure's 169.254.169.254, Alibaba's 100.100.100.200,
     AWS' IPv6 fd00:ec2::254), which hand out the node's cloud credentials. */}}
{{- define "optiserve.anywhereButMetadata" -}}
- ipBlock:
    cidr: 0.0.0.0/0
    except: ["169.254.0.0/16", "100.100.100.200/32"]
- ipBlock:
    cidr: ::/0
    except: ["fd00:ec2::254/128", "fe80::/10"]
{{- end -}}

{{/* DNS egress (port 53, UDP and TCP) to networkPolicy.egress.dnsTo. */}}
{{- define "optiserve.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.egress.dnsTo | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* API server egress (443 and 6443; after the kubernetes Service's address translation the
     connection goes to the control plane's own address, which no selector matches). */}}
{{- define "optiserve.apiServerEgress" -}}
- to:
    {{- if .Values.networkPolicy.egress.apiServerTo }}
    {{- toYaml .Values.networkPolicy.egress.apiServerTo | nindent 4 }}
    {{- else }}
    {{- include "optiserve.anywhereButMetadata" . | nindent 4 }}
    {{- end }}
  ports:
    - port: 443
      protocol: TCP
    - port: 6443
      protocol: TCP
{{- end -}}

{{/* Environment of every Ray container. */}}
{{- define "optiserve.rayEnv" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
- name: OPTISERVE_REPOSITORY
  value: {{ $root.Values.modelRepository.path | quote }}
# each gateway replica answers HTTP on this port itself; Serve's proxies are off
- name: OPTISERVE_LISTEN
  value: {{ printf "0.0.0.0:%d" (int $root.Values.serve.port) | quote }}
{{- if $root.Values.serve.grpcPort }}
# and the OIP over gRPC on this one
- name: OPTISERVE_GRPC_LISTEN
  value: {{ printf "0.0.0.0:%d" (int $root.Values.serve.grpcPort) | quote }}
{{- end }}
{{- range $name, $value := $root.Values.serve.settings }}
- name: {{ printf "OPTISERVE_%s" (upper $name) }}
  {{- /* numbers through toJson: toString prints YAML's float64 20000000 as 2e+07, which an
  integer setting refuses */}}
  value: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
{{- end }}
# user code and the handle router on the replica's loop, handles over gRPC; no direct
# ingress (the gateway's own server replaces it)
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "0"
# those gRPC handle calls are capped at 4 MiB by default, less than one batch of 32 decoded
# 224x224 images (19 MiB); requests are bounded by maxBodyBytes and the pixel budgets
- name: RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH
  value: "2147483647"
# a replica that cannot be scheduled is reported in its application's status (with the
# resources required and available) after 10 s instead of 30; the rollout controller shows it
- name: RAY_SERVE_SLOW_STARTUP_WARNING_S
  value: "10"
- name: RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S
  value: "10"
# nothing may download from a model hub at run time
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
# the root filesystem is read-only: caches and home go to the /tmp emptyDir
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
# Ray's log rotation per file (its defaults, 512 MiB x 6, outgrow the /tmp emptyDir and get the
# pod evicted): ray.logs
- name: RAY_ROTATION_MAX_BYTES
  value: {{ $root.Values.ray.logs.rotationMaxBytes | int64 | toString | quote }}
- name: RAY_ROTATION_BACKUP_COUNT
  value: {{ $root.Values.ray.logs.rotationBackupCount | int | toString | quote }}
{{- with $root.Values.ray.env }}
{{ toYaml . }}
{{- end }}
{{- with $group.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Init containers of every Ray pod: copy the model repository (objectStorage) and verify
     every artifact's sha256 against its manifest (the light init image: no Ray, no runtimes). */}}
{{- define "optiserve.modelInitContainers" -}}
{{- $mr := .Values.modelRepository -}}
{{- if eq $mr.source "objectStorage" }}
- name: fetch-models
  image: {{ include "optiserve.imageRef" (list $mr.objectStorage.image $mr.objectStorage.image.tag) }}
  imagePullPolicy: IfNotPresent
  args:
    - copy
    - {{ required "modelRepository.objectStorage.remote is required when source is objectStorage" $mr.objectStorage.remote | quote }}
    - {{ $mr.path | quote }}
    - --checksum
    - --config=/dev/null
    - --cache-dir=/tmp/rclone
  {{- with $mr.objectStorage.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    {{- include "optiserve.securityContext" . | nindent 4 }}
  resources:
    {{- toYaml $mr.objectStorage.resources | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $mr.path }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- if $mr.verify }}
- name: verify-models
  image: {{ include "optiserve.initImage" . }}
  imagePullPolicy: {{ .Values.initImage.pullPolicy }}
  command: ["optiserve", "repo", "verify", "--repository", {{ $mr.path | quote }}]
  env:
    - name: HOME
      value: /tmp
  securityContext:
    {{- include "optiserve.securityContext" . | nindent 4 }}
  resources:
    {{- toYaml $mr.verifyResources | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $mr.path }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}

{{/* Volumes of a Ray pod; argument: (list $ group). */}}
{{- define "optiserve.rayVolumes" -}}
{{- $root := index . 0 -}}
{{- $g := index . 1 -}}
{{- $mr := $root.Values.modelRepository -}}
- name: models
{{- if eq $mr.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $mr.pvc.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $mr.objectStorage.sizeLimit }}
{{- end }}
# Ray's object store lives in shared memory; the container default (64 MiB) is far too small
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $g.shmSize }}
# Ray writes sessions, logs and sockets under /tmp; the root filesystem stays read-only
- name: tmp
  emptyDir:
    sizeLimit: {{ $g.tmpSize }}
{{- with $g.volumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "optiserve.rayVolumeMounts" -}}
{{- $root := index . 0 -}}
{{- $g := index . 1 -}}
- name: models
  mountPath: {{ $root.Values.modelRepository.path }}
  readOnly: true
- name: shm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
{{- with $g.volumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The drain before a worker stops (preStop):
     1. the pod's gateway replica drains (POST /-/drain, accepted from the pod itself): its
        readiness (/v2/health/ready, /-/healthz) fails at once, so the pod leaves the serve
        Service; for serve.settings.http_drain_accept_s it still answers, every answer closing
        its connection, so clients reconnect to other pods; then its socket closes and requests
        in flight finish within http_drain_timeout_s;
     2. the node is marked draining in Ray's GCS, so Serve starts this node's model replicas
        elsewhere before it stops them (batches in flight from other pods finish);
     3. wait until the gateway's server is gone (nothing listens: wget exit code 4) and no
        connection to it is left (no ESTABLISHED socket on the port in /proc/net/tcp*: the
        requests in flight have their answers), at most ray.drain.timeoutSeconds; stop Ray. */}}
{{- define "optiserve.drainCommand" -}}
{{- $root := index . 0 -}}
{{- $timeout := int $root.Values.ray.drain.timeoutSeconds -}}
{{- $s := $root.Values.serve.settings -}}
{{- $needed := add (int (index $s "http_drain_accept_s")) (int (index $s "http_drain_timeout_s")) -}}
{{- if lt $timeout $needed -}}
{{- fail (printf "ray.drain.timeoutSeconds (%d) must cover serve.settings.http_drain_accept_s + http_drain_timeout_s (%d)" $timeout $needed) -}}
{{- end -}}
port={{ $root.Values.serve.port }}
wget --tries 1 -T 2 -q -O /dev/null --post-data= "http://127.0.0.1:$port/-/drain" || true
ray drain-node --reason=DRAIN_NODE_REASON_PREEMPTION --reason-message="pod terminating" --deadline-remaining-seconds={{ $timeout }} || true
hex=$(printf ':%04X' "$port")
busy() { awk -v p="$hex" '$2 ~ p"$" && $4 == "01" { f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null; }
end=$((SECONDS + {{ $timeout }}))
while [ "$SECONDS" -lt "$end" ]; do
  wget --tries 1 -T 2 -q -O /dev/null "http://127.0.0.1:$port/-/healthz"; rc=$?
  if [ "$rc" -eq 4 ] && ! busy; then break; fi
  sleep 1
done
ray stop
{{- end -}}

{{/* A size ("512Mi", "8Gi", "1Ti") in MiB, for sums of disk sizes; argument: (list size what). */}}
{{- define "optiserve.mebibytes" -}}
{{- $size := toString (index . 0) -}}
{{- $m := regexFind "^[0-9]+(Ki|Mi|Gi|Ti)$" $size -}}
{{- if not $m -}}{{- fail (printf "%s: %q must be a whole number of Ki, Mi, Gi or Ti" (index . 1) $size) -}}{{- end -}}
{{- $n := int (regexFind "^[0-9]+" $size) -}}
{{- $unit := regexFind "(Ki|Mi|Gi|Ti)$" $size -}}
{{- if eq $unit "Ki" -}}{{- div (add $n 1023) 1024 -}}
{{- else if eq $unit "Mi" -}}{{- $n -}}
{{- else if eq $unit "Gi" -}}{{- mul $n 1024 -}}
{{- else -}}{{- mul $n 1048576 -}}
{{- end -}}
{{- end -}}

{{/* The Ray container's resources: the group's, with an ephemeral-storage request covering the
     pod's disk-backed emptyDirs (/tmp with Ray's sessions and logs; the model copy when models
     come from object storage) unless the group sets one. Argument: (list $ group). */}}
{{- define "optiserve.rayResources" -}}
{{- $root := index . 0 -}}
{{- $g := index . 1 -}}
{{- $mr := $root.Values.modelRepository -}}
{{- $disk := int (include "optiserve.mebibytes" (list $g.tmpSize (printf "%s tmpSize" $g.name))) -}}
{{- if eq $mr.source "objectStorage" -}}
{{- $disk = add $disk (int (include "optiserve.mebibytes" (list $mr.objectStorage.sizeLimit "modelRepository.objectStorage.sizeLimit"))) -}}
{{- end -}}
{{- $res := deepCopy ($g.resources | default dict) -}}
{{- $requests := $res.requests | default dict -}}
{{- if not (hasKey $requests "ephemeral-storage") -}}
{{- $_ := set $requests "ephemeral-storage" (printf "%dMi" (int $disk)) -}}
{{- end -}}
{{- $_ := set $res "requests" $requests -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Labels of the Ray pods. Nothing that changes with the chart or app version: KubeRay hashes
     rayClusterConfig, and any change there starts a new cluster. */}}
{{- define "optiserve.rayPodLabels" -}}
{{- $root := index . 0 -}}
{{- $g := index . 1 -}}
{{ include "optiserve.selectorLabels" $root }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: optiserve
app.kubernetes.io/component: {{ ternary "ray-head" "ray-worker" $g.head }}
optiserve.dev/ray-group: {{ $g.name }}
{{- with $root.Values.ray.podLabels }}
{{ toYaml . }}
{{- end }}
{{- with $g.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod template of a Ray group; argument: (list $ group), group: the group's values plus name,
     head (bool), image, resources (final). */}}
{{- define "optiserve.rayPodTemplate" -}}
{{- $root := index . 0 -}}
{{- $g := index . 1 -}}
{{- $v := $root.Values -}}
{{- $annotations := merge (deepCopy ($g.podAnnotations | default dict)) ($v.ray.podAnnotations | default dict) -}}
metadata:
  labels:
    {{- include "optiserve.rayPodLabels" (list $root $g) | nindent 4 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $g.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- /* the head needs the API only for Ray's autoscaler sidecar */}}
  automountServiceAccountToken: {{ and $g.head $v.ray.autoscaler.enabled }}
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $v.ray.priorityClassName $g.priorityClassName) }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $g.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- if not $g.head }}
  # the drain (preStop) gets drainTimeoutSeconds, ray stop the rest
  terminationGracePeriodSeconds: {{ add (int $v.ray.drain.timeoutSeconds) 30 }}
  {{- end }}
  securityContext:
    {{- include "optiserve.podSecurityContext" $root | nindent 4 }}
  {{- $init := include "optiserve.modelInitContainers" $root | trim }}
  {{- if $init }}
  initContainers:
    {{- $init | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" $g.head }}
      image: {{ $g.image }}
      imagePullPolicy: {{ $g.pullPolicy }}
      env:
        {{- include "optiserve.rayEnv" (list $root $g) | nindent 8 }}
      {{- with $g.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- if $g.head }}
        - name: gcs-server
          containerPort: 6379
          protocol: TCP
        - name: dashboard
          containerPort: {{ $v.ray.dashboardPort }}
          protocol: TCP
        - name: client
          containerPort: 10001
          protocol: TCP
        # Ray's dashboard and autoscaler metrics (Ray's own Grafana dashboards read them)
        - name: dash-metrics
          containerPort: {{ $v.ray.dashboardMetricsPort }}
          protocol: TCP
        {{- if $v.ray.autoscaler.enabled }}
        - name: as-metrics
          containerPort: {{ $v.ray.autoscalerMetricsPort }}
          protocol: TCP
        {{- end }}
        {{- end }}
        - name: serve
          containerPort: {{ $v.serve.port }}
          protocol: TCP
        {{- if $v.serve.grpcPort }}
        - name: grpc
          containerPort: {{ $v.serve.grpcPort }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ $v.ray.metricsPort }}
          protocol: TCP
      {{- if $g.head }}
      # raylet and GCS (the dashboard agent's unified health check); the head serves no traffic
      # (excludeHeadPodFromServeSvc), so it is ready once the cluster's control plane is
      readinessProbe:
        httpGet:
          path: /api/healthz
          port: {{ $v.ray.dashboardAgentPort }}
        initialDelaySeconds: 10
        periodSeconds: 5
        timeoutSeconds: 5
        failureThreshold: 10
      {{- else }}
      # the pod's gateway replica: ready once it serves every model's stable version, not ready
      # while it drains; failureThreshold 1, so a draining or dead gateway leaves the serve
      # Service within a period
      readinessProbe:
        httpGet:
          path: /v2/health/ready
          port: serve
        initialDelaySeconds: 10
        periodSeconds: 5
        timeoutSeconds: 2
        successThreshold: 1
        failureThreshold: 1
      {{- end }}
      livenessProbe:
        httpGet:
          path: /api/healthz
          port: {{ $v.ray.dashboardAgentPort }}
        initialDelaySeconds: 30
        periodSeconds: 5
        timeoutSeconds: {{ ternary 5 2 $g.head }}
        failureThreshold: 120
      lifecycle:
        preStop:
          exec:
            {{- if $g.head }}
            command: ["ray", "stop"]
            {{- else }}
            command:
              - bash
              - -c
              - |
                {{- include "optiserve.drainCommand" (list $root) | nindent 16 }}
            {{- end }}
      securityContext:
        {{- include "optiserve.securityContext" $root | nindent 8 }}
      resources:
        {{- include "optiserve.rayResources" (list $root $g) | nindent 8 }}
      volumeMounts:
        {{- include "optiserve.rayVolumeMounts" (list $root $g) | nindent 8 }}
  volumes:
    {{- include "optiserve.rayVolumes" (list $root $g) | nindent 4 }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    {{- $c := deepCopy . }}
    {{- if not (hasKey $c "labelSelector") }}
    {{- /* spread this group's pods (of this release) unless told otherwise */}}
    {{- $_ := set $c "labelSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" (include "optiserve.name" $root) "app.kubernetes.io/instance" $root.Release.Name "optiserve.dev/ray-group" $g.name)) }}
    {{- end }}
    - {{- toYaml $c | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The Ray worker groups, in order: cpu, gpu (when enabled), then workers.additional. Each:
     the group's values with name, image, pullPolicy, gpus (0 for CPU groups) and final
     resources (nvidia.com/gpu added). Returned as JSON: {"groups": [...]}. */}}
{{- define "optiserve.workerGroups" -}}
{{- $groups := list -}}
{{- $w := .Values.workers -}}
{{- if $w.cpu.enabled -}}{{- $groups = append $groups (merge (dict "name" "cpu" "gpus" 0) (deepCopy $w.cpu)) -}}{{- end -}}
{{- if $w.gpu.enabled -}}{{- $groups = append $groups (merge (dict "name" "gpu") (deepCopy $w.gpu)) -}}{{- end -}}
{{- range $w.additional -}}
{{- /* keys the group leaves out take workers.cpu's, whole (a group's nodeSelector replaces
       workers.cpu's rather than merging with it) */ -}}
{{- $g := merge (dict "gpus" 0) (deepCopy (omit $w.cpu "enabled" "replicas" "minReplicas" "maxReplicas")) -}}
{{- range $k, $v := . -}}{{- $_ := set $g $k (deepCopy $v) -}}{{- end -}}
{{- $groups = append $groups $g -}}
{{- end -}}
{{- $out := list -}}
{{- range $groups -}}
{{- $g := . -}}
{{- $gpus := int ($g.gpus | default 0) -}}
{{- $image := ternary (include "optiserve.gpuImage" $) (include "optiserve.image" $) (gt $gpus 0) -}}
{{- $pull := ternary $.Values.gpuImage.pullPolicy $.Values.image.pullPolicy (gt $gpus 0) -}}
{{- $resources := deepCopy ($g.resources | default dict) -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $gpus) ($resources.limits | default dict)) -}}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" $gpus) ($resources.requests | default dict)) -}}
{{- end -}}
{{- $_ := set $g "image" $image -}}
{{- $_ := set $g "pullPolicy" $pull -}}
{{- $_ := set $g "resources" $resources -}}
{{- $_ := set $g "head" false -}}
{{- $out = append $out $g -}}
{{- end -}}
{{- toJson (dict "groups" $out) -}}
{{- end -}}
