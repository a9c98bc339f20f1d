"""optiserve's Grafana dashboards and Prometheus alert rules, built from ``serving.metrics``.

Every metric name comes from a :class:`serving.metrics.MetricSpec` (``spec.prom``), so a renamed
metric changes the dashboards and rules when they are regenerated (``python grafana/generate.py``)
and the sync tests fail until then. Dashboards are built with grafana-foundation-sdk.

Ray adds ``application``, ``deployment`` and ``replica`` labels to optiserve's metrics; the
Prometheus Operator adds ``namespace`` and ``pod``. Queries group by ``namespace`` so that one
Prometheus watching several installs keeps them apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from serving import metrics as M

# ---- Ray Serve's own metrics (not optiserve's specs; names as Ray 2.60 exports them) ----------
#: 1 for a healthy replica, 0 for an unhealthy one; labels application, deployment, replica.
RAY_REPLICA_HEALTHY = "ray_serve_deployment_replica_healthy"
#: 0=UNKNOWN, 1=DEPLOY_FAILED, 2=UNHEALTHY, 3=UPDATING, 4=UPSCALING, 5=DOWNSCALING, 6=HEALTHY.
RAY_DEPLOYMENT_STATUS = "ray_serve_deployment_status"
#: Replicas Serve is trying to run per deployment.
RAY_TARGET_REPLICAS = "ray_serve_autoscaling_target_replicas"
#: CPU and resident memory of Ray's processes, from the dashboard agent on every node
#: (``dashboard/modules/reporter/reporter_agent.py``), labels ip, Component, SessionName, Version.
#: These are Ray's only per-process resource metrics: Serve's own replica metrics
#: (``ray_serve_replica_processing_queries``, ``ray_serve_deployment_replica_healthy`` ...) carry
#: the deployment and replica but no CPU or memory. ``Component`` is the worker's process title,
#: ``ray::<actor class>`` (``ray::<class>.<method>`` while a call runs), and Serve names a replica's
#: actor class ``ServeReplica:<application>:<deployment>``, so a version's replicas are the
#: components ``ray::ServeReplica:<model>-v<version>:<model>-v<version>[.<method>]`` (summed per
#: node over the replicas there). CPU is in percent of one core (over 100 with several threads),
#: memory in MB (10^6 bytes).
RAY_COMPONENT_CPU = "ray_component_cpu_percentage"
RAY_COMPONENT_RSS = "ray_component_rss_mb"

# ---- dashboard variables ----------------------------------------------------------------------
#: Value Grafana substitutes for "All" (a regex: matches every value, and a missing label).
ALL = ".*"
NS = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
VERSION = 'version=~"$version"'
#: A version's deployment is named <model>-v<version> (serving.config.version_app_name).
VERSION_DEPLOYMENT = 'deployment=~"$model-v$version"'
#: The Ray components (processes) of a version's replicas, and model/version taken from them.
VERSION_COMPONENT = 'Component=~"ray::ServeReplica:$model-v$version:.*"'
COMPONENT_MODEL_VERSION = "ray::ServeReplica:(.+)-v([0-9]+):.*"
RATE = "$__rate_interval"
#: Resolution of the annotation queries: the chart's scrape interval (a change is marked where a
#: value differs from the one this long before, so each change is marked once).
ANNOTATION_STEP = "15s"

# ---- alert thresholds: the chart's .Values.alerts defaults ------------------------------------


@dataclass(frozen=True)
class Threshold:
    key: str  # key under .Values.alerts in the Helm chart
    default: float
    description: str

    @property
    def token(self) -> str:
        """Placeholder in rule text, replaced by the default or by a Helm expression."""
        return f"__THRESHOLD_{self.key}__"


P99_OBJECTIVE = Threshold("p99ObjectiveSeconds", 0.5, "p99 request latency objective (seconds)")
ERROR_RATIO = Threshold("errorRatio", 0.05, "share of requests answered with a server-side error")
GPU_UTILIZATION = Threshold("gpuUtilization", 0.95, "mean GPU utilization over 10 minutes")
GPU_MEMORY = Threshold("gpuMemoryRatio", 0.95, "GPU memory used / total")
MIN_RATE = Threshold("minRequestRate", 0.1, "requests/s below which latency and error alerts "
                                            "stay quiet")
OVERLOAD_RATIO = Threshold("overloadRatio", 0.01, "share of requests the gateway sheds with 503 "
                                                  "(outcome overloaded)")
UPGRADE_MINUTES = Threshold("upgradeStuckMinutes", 30, "minutes a KubeRay upgrade (new cluster) "
                                                       "may take")
THRESHOLDS = (P99_OBJECTIVE, ERROR_RATIO, GPU_UTILIZATION, GPU_MEMORY, MIN_RATE, OVERLOAD_RATIO,
              UPGRADE_MINUTES)

# ---- the KubeRay operator's metrics (its /metrics; names as KubeRay exports them) -------------
#: 1 for the RayService, label condition="true"|"false": Ready (serve endpoints > 0)
KUBERAY_SERVICE_READY = "kuberay_service_condition_ready"
#: 1 for the RayService, label condition="true" while a new cluster is being prepared
KUBERAY_SERVICE_UPGRADING = "kuberay_service_condition_upgrade_in_progress"
#: the chart's PodMonitor puts ray_group on every Ray pod target; the controller's
#: ServiceMonitor target's job is its Service, FULLNAME-rollout-controller
RAY_TARGETS = 'ray_group!=""'
CONTROLLER_TARGETS = 'job=~".+-rollout-controller"'
OVERLOADED_M = 'outcome="overloaded"'
CONDITION_TRUE = 'condition="true"'
CONDITION_FALSE = 'condition="false"'

# ---- GPUs: what clusters already run ------------------------------------------------------------
# NVIDIA's dcgm-exporter (GPU Operator), per device and MIG instance, attributed to the pod using
# it (labels namespace, pod; UUID, GPU_I_ID for MIG, modelName), and Ray's own per-node GPU
# metrics (labels GpuIndex, GpuDeviceName; on the chart's PodMonitor targets: namespace, pod).
DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"            # percent; not reported for MIG instances
DCGM_GR_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"  # ratio; also per MIG instance
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"          # MiB
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"          # MiB
RAY_GPU_UTIL = "ray_node_gpus_utilization"    # percent
RAY_GRAM_USED = "ray_node_gram_used"          # MB
RAY_GRAM_AVAILABLE = "ray_node_gram_available"  # MB
GPU_SERIES = (DCGM_UTIL, DCGM_GR_ACTIVE, DCGM_FB_USED, DCGM_FB_FREE, RAY_GPU_UTIL, RAY_GRAM_USED,
              RAY_GRAM_AVAILABLE)
#: the labels every GPU query returns: the serving pod and the device (dcgm: its UUID, with the
#: MIG instance after a "/"; Ray's fallback: its index on the node) and its model name
GPU_BY = "namespace, pod, gpu, gpu_name"
#: the chart's Ray pods (the PodMonitor's targets)
SERVING_PODS = f"group by (namespace, pod) (up{{{RAY_TARGETS}}})"


def _dcgm(expr: str) -> str:
    """A dcgm-exporter expression joined to the serving pods, labelled gpu (UUID[/MIG id]) and
    gpu_name."""
    joined = f'label_join({expr}, "gpu", "/", "UUID", "GPU_I_ID")'
    trimmed = f'label_replace({joined}, "gpu", "$1", "gpu", "(.+?)/?")'
    named = f'label_replace({trimmed}, "gpu_name", "$1", "modelName", "(.+)")'
    return (f"max by ({GPU_BY}) ({named} * on (namespace, pod) group_left () "
            f"{SERVING_PODS})")


def _ray_gpu(expr: str) -> str:
    indexed = f'label_replace({expr}, "gpu", "$1", "GpuIndex", "(.+)")'
    named = f'label_replace({indexed}, "gpu_name", "$1", "GpuDeviceName", "(.+)")'
    return f"max by ({GPU_BY}) ({named})"


def gpu_device(dcgm: str, ray: str) -> str:
    """Per GPU of a serving pod: dcgm-exporter's value, else (for pods dcgm-exporter does not
    report) Ray's."""
    d = _dcgm(dcgm)
    return f"(({d}) or ({_ray_gpu(ray)} unless on (namespace, pod) ({d})))"


def gpu_utilization(ns: str = "") -> str:
    m = sel(ns) if ns else ""
    rm = sel(RAY_TARGETS, ns) if ns else sel(RAY_TARGETS)
    return gpu_device(f"({DCGM_GR_ACTIVE}{m} or {DCGM_UTIL}{m} / 100)",
                      f"{RAY_GPU_UTIL}{rm} / 100")


def gpu_memory_used(ns: str = "") -> str:
    m = sel(ns) if ns else ""
    rm = sel(RAY_TARGETS, ns) if ns else sel(RAY_TARGETS)
    return gpu_device(f"{DCGM_FB_USED}{m} * 1048576", f"{RAY_GRAM_USED}{rm} * 1000000")


def gpu_memory_ratio(ns: str = "") -> str:
    m = sel(ns) if ns else ""
    rm = sel(RAY_TARGETS, ns) if ns else sel(RAY_TARGETS)
    return gpu_device(f"{DCGM_FB_USED}{m} / ({DCGM_FB_USED}{m} + {DCGM_FB_FREE}{m})",
                      f"{RAY_GRAM_USED}{rm} / ({RAY_GRAM_USED}{rm} + {RAY_GRAM_AVAILABLE}{rm})")


#: Outcomes counted as the server's fault (serving.gateway's error outcomes; client_error is not).
SERVER_ERRORS = "server_error|overloaded|timeout"
SERVER_ERROR_M = f'outcome=~"{SERVER_ERRORS}"'
NOT_SUCCESS = 'outcome!="success"'
ROLE_SC = 'role=~"stable|canary"'
GATEWAY_OR_VERSION = 'deployment=~"gateway|$model-v$version"'
PHASE_PROGRESSING = 'phase="progressing"'
PHASE_ROLLED_BACK = 'phase="rolled_back"'
PHASE_INCONCLUSIVE = 'phase="inconclusive"'
#: the controller's advisory check of the canary's observed compute against its prediction
CHECK_COMPUTE_VS_PREDICTED = 'check="compute_vs_predicted"'


def sel(*matchers: str) -> str:
    """A label selector: sel('a="b"', 'c=~"d"') -> '{a="b", c=~"d"}'."""
    return "{" + ", ".join(m for m in matchers if m) + "}"


def series(spec: M.MetricSpec, suffix: str = "") -> str:
    if suffix and spec.kind != "histogram":
        raise ValueError(f"{spec.name} is a {spec.kind}, it has no {suffix} series")
    return spec.prom + suffix


def rate(spec: M.MetricSpec, *matchers: str, suffix: str = "", window: str = RATE) -> str:
    return f"rate({series(spec, suffix)}{sel(*matchers)}[{window}])"


def quantile(q: float, spec: M.MetricSpec, by: str, *matchers: str, window: str = RATE) -> str:
    if spec is M.REQUEST_DURATION:  # latency is the server's over the outcomes it is timed for
        matchers = (*matchers, M.LATENCY_MATCHER)
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"({rate(spec, *matchers, suffix='_bucket', window=window)}))")


def mean(spec: M.MetricSpec, by: str, *matchers: str, window: str = RATE) -> str:
    """Mean of a histogram's observations: its exact-sum counter where it has one (Ray
    exports a histogram's ``_sum`` rebuilt from bucket midpoints), over its ``_count``."""
    exact = M.EXACT_SUM.get(spec.name)
    total = (rate(exact, *matchers, window=window) if exact is not None
             else rate(spec, *matchers, suffix="_sum", window=window))
    return (f"sum by ({by}) ({total}) / "
            f"sum by ({by}) ({rate(spec, *matchers, suffix='_count', window=window)})")


def with_role(expr: str, role: str = ROLE_SC) -> str:
    """Adds the ``role`` (stable/canary) of each version from the gateway's traffic weights,
    keeping only the versions whose role matches ``role`` (a matcher)."""
    tw = M.TRAFFIC_WEIGHT.prom
    return (f"({expr}) * on (namespace, model, version) group_left (role) "
            f"(0 * max by (namespace, model, version, role) "
            f"({tw}{sel(NS, MODEL, role)}) + 1)")


def role_is(role: str) -> str:
    return f'role="{role}"'


def replica_resource(metric: str, scale: str = "1") -> str:
    """A Ray component metric summed over the replicas of each version, with ``model`` and
    ``version`` labels taken from the component (see RAY_COMPONENT_CPU)."""
    inner = f"{metric}{sel(NS, VERSION_COMPONENT)}"
    for i, label in ((1, "model"), (2, "version")):
        inner = (f'label_replace({inner}, "{label}", "${i}", "Component", '
                 f'"{COMPONENT_MODEL_VERSION}")')
    return f"sum by (namespace, model, version) ({inner})" + (f" * {scale}" if scale != "1" else "")


def predicted(q: str, by: str, *matchers: str) -> str:
    """The optimizer's measured compute per batch (quantile ``q``) of each version."""
    quantile_m = f'quantile="{q}"'
    return f"max by ({by}) ({M.PREDICTED_COMPUTE.prom}{sel(*matchers, quantile_m)})"


def error_ratio(by: str, *matchers: str, window: str = RATE) -> str:
    """Server-side errors / all requests; 0 (not empty) where there were requests and no errors."""
    total = f"sum by ({by}) ({rate(M.REQUESTS, *matchers, window=window)})"
    errors = f"sum by ({by}) ({rate(M.REQUESTS, *matchers, SERVER_ERROR_M, window=window)})"
    return f"({errors} or 0 * {total}) / {total}"


# ---- dashboards -------------------------------------------------------------------------------


@dataclass
class Query:
    expr: str
    legend: str


@dataclass
class PanelSpec:
    title: str
    description: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    #: only has data while a canary is served (empty after promotion or rollback)
    needs_canary: bool = False


@dataclass
class AnnotationSpec:
    """A Prometheus annotation query: every time ``expr`` has a value > 0 is marked (points
    less than ``step`` apart make one region); titles and texts use the series' labels."""

    name: str
    expr: str
    title: str
    text: str
    color: str
    tag_keys: str = ""
    step: str = ANNOTATION_STEP


@dataclass
class RowSpec:
    title: str
    panels: list[PanelSpec] = field(default_factory=list)


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[RowSpec]
    #: the metric the namespace/model/version variables take their values from (for the GPU
    #: dashboard too: GPU gauges carry model and version only in the deployment name)
    variable_metric: str = M.REQUESTS.prom
    annotations: list[AnnotationSpec] = field(default_factory=list)

    def panels(self) -> list[PanelSpec]:
        return [p for r in self.rows for p in r.panels]


MV = "namespace, model, version"
F = (NS, MODEL, VERSION)
#: per protocol (serving.metrics.PROTOCOLS: http, grpc, openai), over the selected models
BY_PROTOCOL = "namespace, protocol"


def overview() -> DashboardSpec:
    return DashboardSpec(
        uid="optiserve-overview", title="optiserve / Overview",
        description="Traffic, errors, latency, batching, queues and replicas by model and version.",
        rows=[
            RowSpec("Traffic and errors", [
                PanelSpec("Requests/s", "All inference requests.", [
                    Query(f"sum({rate(M.REQUESTS, *F)})", "requests/s")],
                    unit="reqps", kind="stat", width=6, height=4),
                PanelSpec("Server error ratio", "Requests answered 5xx (server_error, "
                          "overloaded, timeout) / all requests.", [
                              Query(error_ratio("namespace", *F), "{{namespace}}")],
                          unit="percentunit", kind="stat", width=6, height=4),
                PanelSpec("p99 latency", "End-to-end p99 over all models.", [
                    Query(quantile(0.99, M.REQUEST_DURATION, "namespace", *F), "p99")],
                    unit="s", kind="stat", width=6, height=4),
                PanelSpec("Rows/s", "Rows (inferences) processed successfully.", [
                    Query(f"sum({rate(M.ROWS, *F)})", "rows/s")],
                    unit="short", kind="stat", width=6, height=4),
                PanelSpec("Requests/s by model and version", "", [
                    Query(f"sum by ({MV}) ({rate(M.REQUESTS, *F)})",
                          "{{model}} v{{version}}")], unit="reqps"),
                PanelSpec("Errors/s by outcome and code", "Requests not answered with success "
                          "(client errors included).", [
                              Query(f"sum by ({MV}, outcome, code) "
                                    f"({rate(M.REQUESTS, *F, NOT_SUCCESS)})",
                                    "{{model}} v{{version}} {{outcome}} {{code}}")],
                          unit="reqps"),
                PanelSpec("Server error ratio by model and version", "", [
                    Query(error_ratio(MV, *F), "{{model}} v{{version}}")],
                    unit="percentunit", min=0),
                PanelSpec("Rows/s by model and version", "", [
                    Query(f"sum by ({MV}) ({rate(M.ROWS, *F)})", "{{model}} v{{version}}")]),
                PanelSpec("Requests/s by protocol", "Inference requests by how they arrived: "
                          "http (the OIP over REST), grpc (the OIP over gRPC), openai "
                          "(/v1/embeddings, one per OIP request it makes).", [
                              Query(f"sum by ({BY_PROTOCOL}) ({rate(M.REQUESTS, *F)})",
                                    "{{protocol}}")], unit="reqps", min=0),
                PanelSpec("Server error ratio by protocol", "Requests answered 5xx (server_error, "
                          "overloaded, timeout; over gRPC their status codes) / all requests, "
                          "by protocol.", [
                              Query(error_ratio(BY_PROTOCOL, *F), "{{protocol}}")],
                          unit="percentunit", min=0),
            ]),
            RowSpec("Latency", [
                PanelSpec("Request latency p50 / p95 / p99", "End-to-end in the gateway, from "
                          "receipt to response.", [
                              Query(quantile(q, M.REQUEST_DURATION, MV, *F),
                                    f"{{{{model}}}} v{{{{version}}}} p{int(q * 100)}")
                              for q in (0.5, 0.95, 0.99)], unit="s", width=24),
                PanelSpec("Request latency p50 / p99 by protocol", "End-to-end in the gateway, "
                          "by how the request arrived (http, grpc, openai).", [
                              Query(quantile(q, M.REQUEST_DURATION, BY_PROTOCOL, *F),
                                    f"{{{{protocol}}}} p{int(q * 100)}")
                              for q in (0.5, 0.99)], unit="s", width=24, min=0),
                PanelSpec("Queue wait p95", "Time requests waited in the batcher.", [
                    Query(quantile(0.95, M.QUEUE_WAIT, MV, *F), "{{model}} v{{version}}")],
                    unit="s"),
                PanelSpec("Compute time per batch p95", "Model time per batch in the replica.", [
                    Query(quantile(0.95, M.COMPUTE, MV, *F), "{{model}} v{{version}}")],
                    unit="s"),
            ]),
            RowSpec("Batching and queues", [
                PanelSpec("Batch size", "Rows per dispatched batch.", [
                    Query(mean(M.BATCH_SIZE, MV, *F), "{{model}} v{{version}} mean"),
                    Query(quantile(0.95, M.BATCH_SIZE, MV, *F), "{{model}} v{{version}} p95")]),
                PanelSpec("Queued rows and in-flight requests", "", [
                    Query(f"sum by ({MV}) ({M.QUEUE_ROWS.prom}{sel(*F)})",
                          "{{model}} v{{version}} queued rows"),
                    Query(f"sum by ({MV}) ({M.INFLIGHT.prom}{sel(*F)})",
                          "{{model}} v{{version}} in flight")]),
            ]),
            RowSpec("Replicas", [
                PanelSpec("Healthy replicas", "Ray Serve replicas reporting healthy, per "
                          "deployment (gateway and one per served version).", [
                              Query(f"sum by (namespace, application, deployment) "
                                    f"({RAY_REPLICA_HEALTHY}{sel(NS, GATEWAY_OR_VERSION)})",
                                    "{{deployment}}")]),
                PanelSpec("Target replicas", "Replicas Serve is trying to run (autoscaling "
                          "target or num_replicas).", [
                              Query(f"max by (namespace, application, deployment) "
                                    f"({RAY_TARGET_REPLICAS}{sel(NS, GATEWAY_OR_VERSION)})",
                                    "{{deployment}}")]),
                PanelSpec("Deployment status", "6 healthy, 3-5 updating or scaling, 2 unhealthy, "
                          "1 deploy failed.", [
                              Query(f"max by (namespace, application, deployment) "
                                    f"({RAY_DEPLOYMENT_STATUS}{sel(NS, GATEWAY_OR_VERSION)})",
                                    "{{deployment}}")], min=0, max=6),
                PanelSpec("Model load time", "Time each version's replica took to load it.", [
                    Query(f"max by ({MV}) ({M.LOAD_TIME.prom}{sel(*F)})",
                          "{{model}} v{{version}}")], unit="s"),
            ]),
        ])


def _side_by_side(title: str, description: str, queries, **kw) -> list[PanelSpec]:
    """The same panel for the stable version (left) and the canary (right), as Flagger's
    primary/canary dashboard shows them. ``queries(role)`` gives the panel's queries for a role
    matcher (each expression already joined with ``with_role``)."""
    return [PanelSpec(f"{title} · {role}", description, queries(role_is(role)),
                      needs_canary=role == "canary", **kw) for role in ("stable", "canary")]


def canary() -> DashboardSpec:
    RM = (NS, MODEL)
    RV = (*RM, VERSION)
    legend = "{{model}} v{{version}}"

    def by_role(*pairs: tuple[str, str]):
        """queries(role) for (expression, legend suffix) pairs."""
        return lambda role: [Query(with_role(expr, role), f"{legend} {suffix}".rstrip())
                             for expr, suffix in pairs]

    def quantiles(spec: M.MetricSpec, qs: tuple[float, ...]):
        return by_role(*((quantile(q, spec, MV, *RV), f"p{int(q * 100)}") for q in qs))

    predicted_p99 = predicted("0.99", f"{MV}, batch_size", *RV)
    # rows per second of compute at each measured batch size: batch_size / predicted p50. PromQL
    # cannot turn a label into a number, so the batch sizes are spelled out: those the
    # batch-size histogram has buckets for (the optimizer's default sizes are among them)
    predicted_rows = " or ".join(
        f"{b} / " + predicted("0.5", f"{MV}, batch_size", *RV, f'batch_size="{b}"')
        for b in M.BATCH_BUCKETS)
    observed_rows = (f"sum by ({MV}) ({rate(M.BATCH_ROWS, *RV)}) / "
                     f"sum by ({MV}) ({rate(M.COMPUTE_TIME, *RV)})")
    step = f"max by (namespace, model) ({M.ROLLOUT_STEP.prom}{sel(*RM)})"
    step_before = (f"max by (namespace, model) "
                   f"({M.ROLLOUT_STEP.prom}{sel(*RM)} offset {ANNOTATION_STEP})")
    transitions = f"{M.ROLLOUT_TRANSITIONS.prom}{sel(*RM)}"
    transitions_before = f"{transitions} offset {ANNOTATION_STEP}"
    return DashboardSpec(
        uid="optiserve-canary", title="optiserve / Canary rollouts",
        description="Traffic split and rollout controller state; stable and canary side by "
                    "side (requests, success, latency, batching, compute, CPU, memory); the "
                    "canary's compute against the optimizer's prediction; shadow agreement. "
                    "Rollout steps and phase changes are marked as annotations.",
        annotations=[
            AnnotationSpec(
                "Rollout steps",
                f'count_values by (namespace, model) ("step", {step} + 1) '
                f"and on (namespace, model) ({step} != {step_before})",
                "{{model}}: step {{step}}", "The rollout controller moved to step {{step}} "
                "(1-based) and set its weights.", "blue", tag_keys="model"),
            AnnotationSpec(
                "Rollout phase changes",
                f"sum by (namespace, model, from_phase, to_phase) "
                f"(({transitions} unless {transitions_before}) "
                f"or ({transitions} - {transitions_before} > 0))",
                "{{model}}: {{from_phase}} -> {{to_phase}}", "Rollout phase transition.",
                "orange", tag_keys="model,to_phase"),
        ],
        rows=[
            RowSpec("Traffic split", [
                PanelSpec("Traffic weight by version", "Percent of a model's traffic the gateway "
                          "routes to each version.", [
                              Query(f"max by ({MV}, role) ({M.TRAFFIC_WEIGHT.prom}"
                                    f"{sel(*RV, ROLE_SC)})",
                                    "{{model}} v{{version}} ({{role}})")],
                          unit="percent", min=0, max=100),
                PanelSpec("Canary weight set by the rollout controller", "", [
                    Query(f"max by (namespace, model, stable, canary) "
                          f"({M.ROLLOUT_WEIGHT.prom}{sel(*RM)})",
                          "{{model}} v{{stable}} -> v{{canary}}")],
                    unit="percent", min=0, max=100),
            ]),
            RowSpec("Rollout controller", [
                PanelSpec("Phase", "The rollout's current phase.", [
                    Query(f"max by (namespace, model, phase) ({M.ROLLOUT_PHASE.prom}{sel(*RM)}) "
                          "== 1", "{{model}}: {{phase}}")], kind="stat", width=6, height=5),
                PanelSpec("Step", "Index of the current step (0-based).", [
                    Query(f"max by (namespace, model) ({M.ROLLOUT_STEP.prom}{sel(*RM)})",
                          "{{model}}")], kind="stat", width=6, height=5),
                PanelSpec("Failed analyses", "Failed analyses counted against the failure "
                          "budget.", [
                              Query(f"max by (namespace, model) "
                                    f"({M.ROLLOUT_FAILURES.prom}{sel(*RM)})", "{{model}}")],
                          kind="stat", width=6, height=5),
                PanelSpec("Controller errors", "Errors the controller retried in the "
                          "dashboard's time range, by kind (target: the serving target could "
                          "not be read or changed; store: the state could not be read; "
                          "unexpected: anything else). 0 (kind none) for a model without any.", [
                              Query(f"sum by (namespace, model, kind) (increase("
                                    f"{M.ROLLOUT_ERRORS.prom}{sel(*RM)}[$__range])) "
                                    f"or on (namespace, model) label_replace(0 * {step}, "
                                    f'"kind", "none", "", "")', "{{model}} {{kind}}")],
                          kind="stat", width=6, height=5),
                PanelSpec("Analysis check values", "Last measured value of each check "
                          "(compute_vs_predicted: the canary's observed compute / the "
                          "optimizer's prediction).", [
                              Query(f"max by (namespace, model, check) "
                                    f"({M.ROLLOUT_CHECK_VALUE.prom}{sel(*RM)})",
                                    "{{model}} {{check}}")]),
                PanelSpec("Analysis check results", "1 passed, 0 failed, -1 not enough data.", [
                    Query(f"max by (namespace, model, check) "
                          f"({M.ROLLOUT_CHECK_PASSED.prom}{sel(*RM)})", "{{model}} {{check}}")],
                    min=-1, max=1),
                PanelSpec("Phase transitions", "Transitions in the dashboard's time range.", [
                    Query(f"sum by (namespace, model, from_phase, to_phase) "
                          f"(increase({M.ROLLOUT_TRANSITIONS.prom}{sel(*RM)}[$__range]))",
                          "{{model}} {{from_phase}} -> {{to_phase}}")],
                    kind="stat", width=24, height=5),
            ]),
            RowSpec("Stable | canary: traffic and latency", [
                *_side_by_side("Requests/s", "All inference requests to the version.", by_role(
                    (f"sum by ({MV}) ({rate(M.REQUESTS, *RV)})", "")), unit="reqps", min=0),
                *_side_by_side("Success rate", "Requests not answered with a server-side error "
                               "(server_error, overloaded, timeout) / all requests.", by_role(
                                   (f"1 - ({error_ratio(MV, *RV)})", "")),
                               unit="percentunit", max=1),
                *_side_by_side("Request latency p50 / p95 / p99", "End-to-end in the gateway, "
                               "over the outcomes the server is timed for (success, "
                               "server_error, timeout).",
                               quantiles(M.REQUEST_DURATION, (0.5, 0.95, 0.99)), unit="s", min=0),
            ]),
            RowSpec("Stable | canary: batching and compute", [
                *_side_by_side("Batch size", "Rows per dispatched batch.", by_role(
                    (mean(M.BATCH_SIZE, MV, *RV), "mean"),
                    (quantile(0.95, M.BATCH_SIZE, MV, *RV), "p95")), min=0),
                *_side_by_side("Queue wait p50 / p95", "Time requests waited in the batcher.",
                               quantiles(M.QUEUE_WAIT, (0.5, 0.95)), unit="s", min=0),
                *_side_by_side("Compute time per batch p50 / p99", "Model time per batch in "
                               "the version's replicas.", quantiles(M.COMPUTE, (0.5, 0.99)),
                               unit="s", min=0),
            ]),
            RowSpec("Stable | canary: replica resources", [
                *_side_by_side("Replica CPU (cores)", "CPU of the version's Ray Serve replicas "
                               "(Ray's per-process ray_component_cpu_percentage / 100).", by_role(
                                   (replica_resource(RAY_COMPONENT_CPU) + " / 100", "")), min=0),
                *_side_by_side("Replica memory (RSS)", "Resident memory of the version's Ray "
                               "Serve replicas (Ray's ray_component_rss_mb).", by_role(
                                   (replica_resource(RAY_COMPONENT_RSS, "1000000"), "")),
                               unit="decbytes", min=0),
            ]),
            RowSpec("Stable | canary: observed vs predicted", [
                *_side_by_side("Compute p99: observed vs predicted", "Observed p99 compute per "
                               "batch (all batch sizes) next to the p99 the optimizer measured "
                               "for this version at each batch size it benchmarked (its "
                               "manifest); a canary far off its prediction runs on other "
                               "hardware or threads than it was optimized for.", by_role(
                                   (quantile(0.99, M.COMPUTE, MV, *RV), "observed p99"),
                                   (predicted_p99, "predicted p99 at batch {{batch_size}}")),
                               unit="s", min=0),
                *_side_by_side("Capacity: rows per compute-second", "Observed rows per second "
                               "of model compute (rows / compute time) next to the optimizer's "
                               "prediction at each batch size it benchmarked (batch size / "
                               "its p50; shown for batch sizes 1, 2, 4 ... 256).", by_role(
                                   (observed_rows, "observed"),
                                   (predicted_rows, "predicted at batch {{batch_size}}")),
                               min=0),
            ]),
            RowSpec("Shadow: canary vs stable on mirrored requests", [
                PanelSpec("Shadow agreement", "Per-row agreement of canary with stable on "
                          "mirrored requests (cosine for embeddings, top-1 match for "
                          "classifiers); the mean is what the rollout's agreement check "
                          "compares with its bound.", [
                              Query(mean(M.SHADOW_AGREEMENT, "namespace, model, stable, canary",
                                         *RM),
                                    "{{model}} v{{canary}} vs v{{stable}} mean"),
                              *(Query(quantile(q, M.SHADOW_AGREEMENT, "namespace, model, stable, "
                                               "canary", *RM),
                                      f"{{{{model}}}} v{{{{canary}}}} vs v{{{{stable}}}} "
                                      f"p{int(q * 100):02d}")
                                for q in (0.5, 0.05))], unit="percentunit", max=1,
                          needs_canary=True),
                PanelSpec("Shadow requests/s by outcome", "Mirrored requests: compared, dropped "
                          "(queue full), failed.", [
                              Query(f"sum by (namespace, model, stable, canary, outcome) "
                                    f"({rate(M.SHADOW_REQUESTS, *RM)})",
                                    "{{model}} v{{canary}} {{outcome}}")],
                          unit="reqps", needs_canary=True),
            ]),
        ])


def gpu() -> DashboardSpec:
    G = (NS, VERSION_DEPLOYMENT)
    by = "namespace, instance, gpu, gpu_uuid, gpu_name"
    legend = "{{instance}} GPU {{gpu}} ({{gpu_name}})"
    dev_legend = "{{pod}} GPU {{gpu}} ({{gpu_name}})"
    return DashboardSpec(
        uid="optiserve-gpu", title="optiserve / GPUs",
        description="Every GPU of the serving pods, idle ones included, from NVIDIA's "
                    "dcgm-exporter (one series per device or MIG instance, labelled by UUID), "
                    "or Ray's per-node GPU metrics where dcgm-exporter does not run; then what "
                    "the replicas of GPU versions sample through NVML.",
        rows=[RowSpec("Devices of the serving pods (dcgm-exporter, else Ray)", [
            PanelSpec("GPU utilization", "Graphics engine active (dcgm-exporter's "
                      "DCGM_FI_PROF_GR_ENGINE_ACTIVE, also per MIG instance; else "
                      "DCGM_FI_DEV_GPU_UTIL, else Ray's ray_node_gpus_utilization).", [
                          Query(gpu_utilization(NS), dev_legend)],
                      unit="percentunit", min=0, max=1),
            PanelSpec("GPU memory used", "Frame buffer in use.", [
                Query(gpu_memory_used(NS), dev_legend)], unit="bytes", min=0),
            PanelSpec("GPU memory used / total", "", [
                Query(gpu_memory_ratio(NS), dev_legend)], unit="percentunit", min=0, max=1),
        ]), RowSpec("Sampled by the replicas (NVML)", [
            PanelSpec("GPU utilization (replicas)", "", [
                Query(f"max by ({by}) ({M.GPU_UTILIZATION.prom}{sel(*G)})", legend)],
                unit="percentunit", min=0, max=1),
            PanelSpec("GPU memory used (replicas)", "", [
                Query(f"max by ({by}) ({M.GPU_MEMORY_USED.prom}{sel(*G)})", legend + " used"),
                Query(f"max by ({by}) ({M.GPU_MEMORY_TOTAL.prom}{sel(*G)})", legend + " total")],
                unit="bytes", min=0),
            PanelSpec("GPU power", "", [
                Query(f"max by ({by}) ({M.GPU_POWER.prom}{sel(*G)})", legend)],
                unit="watt", min=0),
        ])])


DASHBOARDS = {"overview": overview, "canary": canary, "gpu": gpu}


def variable_queries(d: DashboardSpec) -> dict[str, str]:
    """Grafana ``label_values`` queries of the namespace/model/version variables."""
    metric = d.variable_metric
    return {"namespace": f"label_values({metric}, namespace)",
            "model": f"label_values({metric}{sel(NS)}, model)",
            "version": f"label_values({metric}{sel(NS, MODEL)}, version)"}


def build_dashboard(d: DashboardSpec) -> dict:
    """The Grafana dashboard JSON model, built with grafana-foundation-sdk."""
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataSourceRef,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )

    ds = DataSourceRef(type_val="prometheus", uid="${datasource}")
    b = (db.Dashboard(d.title).uid(d.uid).description(d.description)
         .tags(["optiserve"]).refresh("30s").time("now-1h", "now")
         .tooltip(DashboardCursorSync.CROSSHAIR).timezone("browser"))
    for a in d.annotations:
        b.annotation(db.AnnotationQuery().name(a.name).datasource(ds).enable(True)
                     .icon_color(a.color).expr(a.expr))
    b.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    all_option = VariableOption(selected=True, text="All", value="$__all")
    for name, query in variable_queries(d).items():
        b.with_variable(
            db.QueryVariable(name).label(name.capitalize()).datasource(ds).query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.NATURAL_ASC)
            .include_all(True).all_value(ALL).multi(True).current(all_option))
    for row in d.rows:
        b.with_row(db.Row(row.title))
        for p in row.panels:
            if p.kind == "stat":
                panel = (stat.Panel().graph_mode(common.BigValueGraphMode.AREA)
                         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"])))
            else:
                panel = (timeseries.Panel().line_width(1).fill_opacity(10)
                         .legend(cb.VizLegendOptions()
                                 .display_mode(common.LegendDisplayMode.TABLE)
                                 .placement(common.LegendPlacement.BOTTOM)
                                 .show_legend(True).calcs(["lastNotNull", "max"])))
            panel = (panel.title(p.title).description(p.description).datasource(ds)
                     .unit(p.unit).span(p.width).height(p.height))
            if p.min is not None:
                panel = panel.min(p.min)
            if p.max is not None:
                panel = panel.max(p.max)
            for i, q in enumerate(p.queries):
                panel = panel.with_target(prometheus.Dataquery().expr(q.expr)
                                          .legend_format(q.legend).ref_id(chr(ord("A") + i))
                                          .datasource(ds))
            b.with_panel(panel)
    doc = json.loads(json.dumps(b.build(), cls=JSONEncoder))
    # what the SDK's AnnotationQuery has no setters for: the Prometheus annotation options
    # (Grafana's PrometheusAnnotationSupport reads these; it moves expr and step into a target)
    for entry, a in zip(doc.get("annotations", {}).get("list", []), d.annotations, strict=True):
        entry.update({"step": a.step, "titleFormat": a.title, "textFormat": a.text,
                      "tagKeys": a.tag_keys, "useValueForTime": False})
    return doc


def dashboard_queries(doc: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard JSON model."""
    out = []
    for panel in doc.get("panels", []):
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def annotation_queries(doc: dict) -> list[tuple[str, str, str]]:
    """(name, expr, step) of every Prometheus annotation query in a dashboard JSON model."""
    return [(a["name"], a["expr"], a["step"])
            for a in doc.get("annotations", {}).get("list", []) if "expr" in a]


def canary_only_panels(d: DashboardSpec) -> set[str]:
    """Titles of the panels that only have data while a canary is served."""
    return {p.title for p in d.panels() if p.needs_canary}


# ---- alert rules ------------------------------------------------------------------------------


@dataclass
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    group: str


def alerts() -> list[Alert]:
    dur_count = M.REQUEST_DURATION.prom + "_count"
    by_mv = "namespace, model, version"
    traffic_mv = (f"sum by ({by_mv}) (rate({dur_count}[5m])) > {MIN_RATE.token}")
    req = M.REQUESTS.prom
    total_m = f"sum by (namespace, model) (rate({req}[5m]))"
    return [
        Alert("OptiserveP99LatencyHigh",
              f"histogram_quantile(0.99, sum by ({by_mv}, le) "
              f"(rate({M.REQUEST_DURATION.prom}_bucket{sel(M.LATENCY_MATCHER)}[5m]))) > "
              f"{P99_OBJECTIVE.token} "
              f"and on ({by_mv}) {traffic_mv}",
              "10m", "warning",
              "{{ $labels.model }} v{{ $labels.version }}: p99 latency over its objective",
              "p99 request latency of {{ $labels.model }} version {{ $labels.version }} in "
              "{{ $labels.namespace }} has been above " + P99_OBJECTIVE.token + " s for 10 "
              "minutes.", "optiserve.serving"),
        Alert("OptiserveErrorRateHigh",
              f"sum by (namespace, model) (rate({req}{sel(SERVER_ERROR_M)}[5m])) "
              f"/ {total_m} > {ERROR_RATIO.token} "
              f"and on (namespace, model) {total_m} > {MIN_RATE.token}",
              "5m", "critical",
              "{{ $labels.model }}: server error ratio high",
              "More than " + ERROR_RATIO.token + " of {{ $labels.model }}'s requests in "
              "{{ $labels.namespace }} end in server_error, overloaded or timeout.",
              "optiserve.serving"),
        Alert("OptiserveOverloaded",
              f"sum by (namespace, model) (rate({req}{sel(OVERLOADED_M)}[5m])) "
              f"/ {total_m} > {OVERLOAD_RATIO.token} "
              f"and on (namespace, model) {total_m} > {MIN_RATE.token}",
              "5m", "warning",
              "{{ $labels.model }}: requests shed (503) for overload",
              "More than " + OVERLOAD_RATIO.token + " of {{ $labels.model }}'s requests in "
              "{{ $labels.namespace }} are refused with 503 because its queues are full: add "
              "replicas or workers (or let Serve autoscaling / Ray's autoscaler do it).",
              "optiserve.serving"),
        Alert("OptiserveTargetDown",
              f"max by (namespace, pod, ray_group) (up{sel(RAY_TARGETS)}) == 0",
              "5m", "critical",
              "{{ $labels.pod }}: Ray metrics not scraped",
              "Prometheus has not scraped Ray pod {{ $labels.pod }} (group "
              "{{ $labels.ray_group }}) in {{ $labels.namespace }} for 5 minutes: the pod or "
              "its raylet is down, or the NetworkPolicy keeps Prometheus out "
              "(networkPolicy.metricsFrom).", "optiserve.serving"),
        Alert("OptiserveMetricsAbsent",
              f"absent({M.TRAFFIC_WEIGHT.prom})",
              "10m", "critical",
              "No optiserve gateway metrics",
              "Prometheus has no " + M.TRAFFIC_WEIGHT.prom + " series, which every running "
              "gateway exports: the serve application is not running, or its metrics are not "
              "scraped (PodMonitor not selected by this Prometheus: "
              "monitoring.selectorLabels).", "optiserve.serving"),
        Alert("OptiserveKubeRayNotReady",
              f"max by (namespace, name) ({KUBERAY_SERVICE_READY}{sel(CONDITION_FALSE)}) == 1",
              "10m", "critical",
              "RayService {{ $labels.name }} not ready",
              "KubeRay reports RayService {{ $labels.name }} in {{ $labels.namespace }} not "
              "Ready (no serve endpoints) for 10 minutes: see `kubectl describe rayservice "
              "{{ $labels.name }}` and the KubeRay operator's log.", "optiserve.kuberay"),
        Alert("OptiserveKubeRayUpgradeStuck",
              f"max by (namespace, name) (min_over_time({KUBERAY_SERVICE_UPGRADING}"
              f"{sel(CONDITION_TRUE)}[{UPGRADE_MINUTES.token}m])) == 1",
              "0m", "warning",
              "RayService {{ $labels.name }}: new cluster not serving",
              "KubeRay has been preparing a new cluster for RayService {{ $labels.name }} in "
              "{{ $labels.namespace }} for over " + UPGRADE_MINUTES.token + " minutes (a "
              "rayClusterConfig change): its pods do not start or its serve applications do "
              "not run (often: no room for a second cluster, e.g. GPUs).",
              "optiserve.kuberay"),
        Alert("OptiserveKubeRayMetricsAbsent",
              f"absent({KUBERAY_SERVICE_READY})",
              "15m", "warning",
              "No KubeRay operator metrics",
              "Prometheus has no " + KUBERAY_SERVICE_READY + " series, so the KubeRay alerts "
              "cannot fire: the KubeRay operator's metrics are not scraped (the kuberay-operator "
              "chart's metrics.serviceMonitor.enabled is off by default; enable it with labels "
              "this Prometheus selects).", "optiserve.kuberay"),
        Alert("OptiserveRolloutControllerDown",
              f"max by (namespace, job) (up{sel(CONTROLLER_TARGETS)}) == 0",
              "5m", "warning",
              "{{ $labels.job }} down",
              "Prometheus has not scraped the rollout controller {{ $labels.job }} in "
              "{{ $labels.namespace }} for 5 minutes: rollouts do not advance or roll back "
              "while it is down.", "optiserve.rollout"),
        Alert("OptiserveReplicasUnhealthy",
              f"count by (namespace, application, deployment) ({RAY_REPLICA_HEALTHY} == 0) > 0 "
              f"or max by (namespace, application, deployment) ({RAY_DEPLOYMENT_STATUS}) > 0 < 3",
              "5m", "critical",
              "{{ $labels.deployment }}: Ray Serve replicas unhealthy",
              "Deployment {{ $labels.deployment }} (application {{ $labels.application }}) in "
              "{{ $labels.namespace }} has had unhealthy replicas (or is UNHEALTHY / "
              "DEPLOY_FAILED) for 5 minutes.",
              "optiserve.serving"),
        Alert("OptiserveCanaryFailing",
              f"max by (namespace, model) ({M.ROLLOUT_FAILURES.prom}) > 0 "
              f"and on (namespace, model) "
              f"max by (namespace, model) ({M.ROLLOUT_PHASE.prom}{sel(PHASE_PROGRESSING)}) == 1",
              "1m", "warning",
              "{{ $labels.model }}: canary failing its analysis",
              "The canary of {{ $labels.model }} in {{ $labels.namespace }} failed rollout "
              "analyses; the controller rolls it back when its failure budget is spent.",
              "optiserve.rollout"),
        Alert("OptiserveCanaryRolledBack",
              f"max by (namespace, model) ({M.ROLLOUT_PHASE.prom}{sel(PHASE_ROLLED_BACK)}) == 1",
              "0m", "warning",
              "{{ $labels.model }}: canary rolled back",
              "The rollout controller rolled back the canary of {{ $labels.model }} in "
              "{{ $labels.namespace }}; all traffic is on the stable version.",
              "optiserve.rollout"),
        Alert("OptiserveRolloutInconclusive",
              f"max by (namespace, model) ({M.ROLLOUT_PHASE.prom}{sel(PHASE_INCONCLUSIVE)}) == 1",
              "0m", "warning",
              "{{ $labels.model }}: rollout paused, too little data",
              "The canary of {{ $labels.model }} in {{ $labels.namespace }} did not get enough "
              "requests to be judged within its wait budget; the rollout holds its weights "
              "until someone runs `optiserve rollout resume`, promote or abort.",
              "optiserve.rollout"),
        Alert("OptiserveRolloutControllerErrors",
              f"sum by (namespace, model, kind) (increase({M.ROLLOUT_ERRORS.prom}[10m])) > 0",
              "5m", "warning",
              "{{ $labels.model }}: rollout controller keeps retrying {{ $labels.kind }} errors",
              "The rollout controller in {{ $labels.namespace }} has hit {{ $labels.kind }} "
              "errors on the rollout of {{ $labels.model }} within the last 10 minutes, for 5 "
              "minutes (target: the serving target could not be read or changed; store: the "
              "rollout state could not be read; unexpected: anything else). It retries, but the "
              "rollout does not advance while they last: see the controller's log.",
              "optiserve.rollout"),
        Alert("OptiserveCanaryOffPrediction",
              f"max by (namespace, model) ({M.ROLLOUT_CHECK_PASSED.prom}"
              f"{sel(CHECK_COMPUTE_VS_PREDICTED)}) == 0 "
              f"and on (namespace, model) "
              f"max by (namespace, model) ({M.ROLLOUT_PHASE.prom}{sel(PHASE_PROGRESSING)}) == 1",
              "2m", "warning",
              "{{ $labels.model }}: canary's compute is off the optimizer's prediction",
              "The canary of {{ $labels.model }} in {{ $labels.namespace }} computes more than "
              "the configured factor away from what the optimizer measured for it (check "
              "compute_vs_predicted; its value is observed / predicted): it likely runs on other "
              "hardware, threads or execution providers than it was optimized for. Advisory: "
              "the rollout goes on.", "optiserve.rollout"),
        Alert("OptiserveGPUSaturated",
              f"max by ({GPU_BY}) (avg_over_time(({gpu_utilization()})[10m:1m])) "
              f"> {GPU_UTILIZATION.token}",
              "15m", "warning",
              "GPU {{ $labels.gpu }} of {{ $labels.pod }} saturated",
              "GPU {{ $labels.gpu }} ({{ $labels.gpu_name }}) of serving pod {{ $labels.pod }} "
              "in {{ $labels.namespace }} has averaged over " + GPU_UTILIZATION.token +
              " utilization; add GPU workers or replicas.", "optiserve.gpu"),
        Alert("OptiserveGPUMemoryHigh",
              f"{gpu_memory_ratio()} > {GPU_MEMORY.token}",
              "10m", "warning",
              "GPU {{ $labels.gpu }} of {{ $labels.pod }} memory nearly full",
              "GPU {{ $labels.gpu }} ({{ $labels.gpu_name }}) of serving pod {{ $labels.pod }} "
              "in {{ $labels.namespace }} has used over " + GPU_MEMORY.token + " of its memory "
              "for 10 minutes.", "optiserve.gpu"),
    ]


def rule_groups(alert_list: list[Alert] | None = None) -> dict:
    """The rules as a Prometheus rule file document, thresholds still as tokens."""
    groups: dict[str, list] = {}
    for a in alert_list or alerts():
        groups.setdefault(a.group, []).append({
            "alert": a.name, "expr": a.expr, "for": a.for_,
            "labels": {"severity": a.severity},
            "annotations": {"summary": a.summary, "description": a.description},
        })
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]}


def with_defaults(text: str) -> str:
    for t in THRESHOLDS:
        text = text.replace(t.token, repr(t.default))
    return text


def with_helm_values(text: str) -> str:
    """Rule text for the chart: Prometheus's own {{ }} escaped from Helm's tpl, thresholds from
    .Values.alerts."""
    import re

    text = re.sub(r"\{\{|\}\}", lambda m: "{{`" + m.group() + "`}}", text)
    for t in THRESHOLDS:
        text = text.replace(t.token, "{{ .Values.alerts." + t.key + " }}")
    return text


# ---- promtool unit tests: each alert fires in one case and stays quiet in another -------------


def _s(metric: str, labels: dict[str, str], values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _latency_series(p99_fast: bool) -> list[dict]:
    """60 requests/min; 98% under 0.1 s, the rest under 0.25 s (fast) or over 1 s (slow)."""
    lb = {"namespace": "prod", "model": "minilm", "version": "2", "outcome": "success"}
    slow_le = "0.25" if p99_fast else "2.5"
    out = []
    for le in M.REQUEST_DURATION.boundaries + (float("inf"),):
        le_s = "+Inf" if le == float("inf") else repr(le)
        per_min = 60 if le >= float(slow_le) else (58.8 if le >= 0.1 else 0)
        out.append(_s(M.REQUEST_DURATION.prom + "_bucket", {**lb, "le": le_s},
                      f"0+{per_min}x40"))
    out.append(_s(M.REQUEST_DURATION.prom + "_count", lb, "0+60x40"))
    return out


def _request_series(share: float, outcome: str = "server_error", code: str = "500"
                    ) -> list[dict]:
    """600 requests a minute, ``share`` of them with ``outcome``/``code``, the rest successes."""
    lb = {"namespace": "prod", "model": "minilm", "version": "2"}
    ok = 600 * (1 - share)
    return [_s(M.REQUESTS.prom, {**lb, "outcome": "success", "code": "200"}, f"0+{ok:g}x30"),
            _s(M.REQUESTS.prom, {**lb, "outcome": outcome, "code": code},
               f"0+{600 - ok:g}x30")]


def _protocol_series(per_min: dict[tuple[str, str, str], float]) -> list[dict]:
    """Request counters split by protocol: (protocol, outcome, code) -> requests a minute."""
    lb = {"namespace": "prod", "model": "minilm", "version": "2"}
    return [_s(M.REQUESTS.prom, {**lb, "outcome": o, "code": c, "protocol": p}, f"0+{n:g}x30")
            for (p, o, c), n in per_min.items()]


#: 4 requests a minute over each of REST and gRPC, one in four a 500: each protocol alone is
#: under the alerts' minimum request rate (6 a minute), the model's traffic is over it
SPLIT_SLOW_ERRORS = _protocol_series({
    ("http", "success", "200"): 3, ("http", "server_error", "500"): 1,
    ("grpc", "success", "200"): 3, ("grpc", "server_error", "500"): 1})
#: 1% server errors over all protocols, all of them on the little gRPC traffic (20% of it)
SPLIT_FEW_ERRORS = _protocol_series({
    ("http", "success", "200"): 570, ("grpc", "success", "200"): 24,
    ("grpc", "server_error", "500"): 6})


GPU_POD = {"namespace": "prod", "pod": "osv-optiserve-raycluster-x-gpu-worker-a"}
GPU_UUID = "GPU-5c1a2b3c-0000-1111-2222-333344445555"


def _gpu_series(util: float, used: float, source: str = "dcgm") -> list[dict]:
    """One GPU of a serving pod, as dcgm-exporter (full GPU or a MIG instance) or Ray reports
    it; the pod is a target of the chart's PodMonitor."""
    out = [_s("up", {**GPU_POD, "ray_group": "gpu", "job": "prod/osv-optiserve-ray"}, "1x40")]
    total_mib = 24000
    if source in ("dcgm", "mig"):
        lb = {**GPU_POD, "container": "ray-worker", "gpu": "0", "UUID": GPU_UUID,
              "modelName": "NVIDIA L4", "Hostname": "node-1"}
        if source == "mig":
            lb = {**lb, "GPU_I_ID": "3", "GPU_I_PROFILE": "1g.10gb"}
        else:
            out.append(_s(DCGM_UTIL, lb, f"{util * 100:g}x40"))
        out += [_s(DCGM_GR_ACTIVE, lb, f"{util}x40"),
                _s(DCGM_FB_USED, lb, f"{used * total_mib:g}x40"),
                _s(DCGM_FB_FREE, lb, f"{(1 - used) * total_mib:g}x40")]
    else:
        lb = {**GPU_POD, "ray_group": "gpu", "GpuIndex": "0", "GpuDeviceName": "NVIDIA L4",
              "instance": "10.0.0.7:8080"}
        out += [_s(RAY_GPU_UTIL, lb, f"{util * 100:g}x40"),
                _s(RAY_GRAM_USED, lb, f"{used * total_mib:g}x40"),
                _s(RAY_GRAM_AVAILABLE, lb, f"{(1 - used) * total_mib:g}x40")]
    return out


def _rollout_series(phase: str, failures: int) -> list[dict]:
    out = [_s(M.ROLLOUT_PHASE.prom, {"namespace": "prod", "model": "minilm", "phase": p},
              ("1" if p == phase else "0") + "x20")
           for p in ("pending", "progressing", "inconclusive", "promoted", "rolled_back",
                     "aborted")]
    out.append(_s(M.ROLLOUT_FAILURES.prom, {"namespace": "prod", "model": "minilm"},
                  f"{failures}x20"))
    return out


def _controller_error_series(values: str) -> list[dict]:
    lb = {"namespace": "prod", "model": "minilm", "kind": "target"}
    return [_s(M.ROLLOUT_ERRORS.prom, lb, values)]


def _prediction_series(passed: int, phase: str = "progressing") -> list[dict]:
    checks = {"compute_vs_predicted": passed, "error_rate": 1}
    return [*_rollout_series(phase, 0), *(
        _s(M.ROLLOUT_CHECK_PASSED.prom, {"namespace": "prod", "model": "minilm", "check": c},
           f"{v}x20") for c, v in checks.items())]


def _replica_series(healthy: int, status: int = 6) -> list[dict]:
    dep = {"namespace": "prod", "application": "minilm-v2", "deployment": "minilm-v2"}
    return [_s(RAY_REPLICA_HEALTHY, {**dep, "replica": r}, f"{h}x20")
            for r, h in (("a1", 1), ("b2", healthy))] + [
        _s(RAY_DEPLOYMENT_STATUS, dep, f"{status}x20")]


def _up_series(up: int, **labels: str) -> list[dict]:
    return [_s("up", {"namespace": "prod", **labels}, f"{up}x20")]


def _ray_target(up: int) -> list[dict]:
    return _up_series(up, pod="osv-optiserve-raycluster-x-cpu-worker-a", ray_group="cpu",
                      job="prod/osv-optiserve-ray")


def _kuberay_series(metric: str, state: str, minutes: int = 40) -> list[dict]:
    lb = {"namespace": "prod", "name": "osv-optiserve", "uid": "u1"}
    other = "false" if state == "true" else "true"
    return [_s(metric, {**lb, "condition": state}, f"1x{minutes}"),
            _s(metric, {**lb, "condition": other}, f"0x{minutes}")]


def rule_tests(rules_file: str) -> dict:
    """promtool ``test rules`` document for the default thresholds (P99 0.5 s, errors 5%,
    GPU 95%): one case per alert where it fires and one where it stays quiet."""
    mv = {"namespace": "prod", "model": "minilm", "version": "2"}
    gpu = {**GPU_POD, "gpu": GPU_UUID, "gpu_name": "NVIDIA L4"}
    cases = [
        ("OptiserveP99LatencyHigh", _latency_series(False), _latency_series(True), "30m",
         {**mv, "severity": "warning"}),
        ("OptiserveErrorRateHigh", _request_series(0.2), _request_series(0.01), "20m",
         {"namespace": "prod", "model": "minilm", "severity": "critical"}),
        ("OptiserveOverloaded", _request_series(0.05, "overloaded", "503"),
         _request_series(0.002, "overloaded", "503"), "20m",
         {"namespace": "prod", "model": "minilm", "severity": "warning"}),
        ("OptiserveTargetDown", _ray_target(0), _ray_target(1), "10m",
         {"namespace": "prod", "pod": "osv-optiserve-raycluster-x-cpu-worker-a",
          "ray_group": "cpu", "severity": "critical"}),
        ("OptiserveMetricsAbsent", [],
         [_s(M.TRAFFIC_WEIGHT.prom, {"namespace": "prod", "model": "minilm", "version": "2",
                                     "role": "stable"}, "100x20")], "15m",
         {"severity": "critical"}),
        ("OptiserveKubeRayMetricsAbsent", [], _kuberay_series(KUBERAY_SERVICE_READY, "true"),
         "20m", {"severity": "warning"}),
        ("OptiserveKubeRayNotReady", _kuberay_series(KUBERAY_SERVICE_READY, "false"),
         _kuberay_series(KUBERAY_SERVICE_READY, "true"), "15m",
         {"namespace": "prod", "name": "osv-optiserve", "severity": "critical"}),
        ("OptiserveKubeRayUpgradeStuck", _kuberay_series(KUBERAY_SERVICE_UPGRADING, "true"),
         _kuberay_series(KUBERAY_SERVICE_UPGRADING, "false"), "35m",
         {"namespace": "prod", "name": "osv-optiserve", "severity": "warning"}),
        ("OptiserveRolloutControllerDown",
         _up_series(0, job="osv-optiserve-rollout-controller"),
         _up_series(1, job="osv-optiserve-rollout-controller"), "10m",
         {"namespace": "prod", "job": "osv-optiserve-rollout-controller",
          "severity": "warning"}),
        ("OptiserveReplicasUnhealthy", _replica_series(0), _replica_series(1, 4), "15m",
         {"namespace": "prod", "application": "minilm-v2", "deployment": "minilm-v2",
          "severity": "critical"}),
        ("OptiserveCanaryFailing", _rollout_series("progressing", 1),
         _rollout_series("progressing", 0), "10m",
         {"namespace": "prod", "model": "minilm", "severity": "warning"}),
        ("OptiserveCanaryRolledBack", _rollout_series("rolled_back", 2),
         _rollout_series("promoted", 0), "5m",
         {"namespace": "prod", "model": "minilm", "severity": "warning"}),
        ("OptiserveRolloutInconclusive", _rollout_series("inconclusive", 0),
         _rollout_series("progressing", 0), "5m",
         {"namespace": "prod", "model": "minilm", "severity": "warning"}),
        ("OptiserveRolloutControllerErrors", _controller_error_series("0+1x30"),
         _controller_error_series("0x30"), "15m",
         {"namespace": "prod", "model": "minilm", "kind": "target", "severity": "warning"}),
        ("OptiserveCanaryOffPrediction", _prediction_series(0), _prediction_series(1), "10m",
         {"namespace": "prod", "model": "minilm", "severity": "warning"}),
        ("OptiserveGPUSaturated", _gpu_series(0.99, 0.4), _gpu_series(0.6, 0.4), "30m",
         {**gpu, "severity": "warning"}),
        ("OptiserveGPUMemoryHigh", _gpu_series(0.5, 0.98), _gpu_series(0.5, 0.5), "30m",
         {**gpu, "severity": "warning"}),
    ]
    # a model's requests arrive over several protocols; the alerts judge them together
    more_firing = [
        ("OptiserveErrorRateHigh",
         "errors over REST and gRPC, each protocol below the minimum rate", SPLIT_SLOW_ERRORS,
         "20m",
         {"namespace": "prod", "model": "minilm", "severity": "critical"}),
    ]
    # more cases where an alert must stay quiet: (alert, what, input series, eval time)
    more_quiet = [
        ("OptiserveErrorRateHigh", "1% errors overall, all on the little gRPC traffic",
         SPLIT_FEW_ERRORS, "20m"),
        ("OptiserveKubeRayUpgradeStuck", "an upgrade of 10 minutes",
         [_s(KUBERAY_SERVICE_UPGRADING, {"namespace": "prod", "name": "osv-optiserve",
                                         "uid": "u1", "condition": "true"}, "0x25 1x10")],
         "35m"),
        ("OptiserveTargetDown", "another job's target (not a Ray pod of the chart)",
         _up_series(0, job="prod/something-else", pod="x"), "10m"),
        ("OptiserveOverloaded", "too little traffic to judge",
         [_s(M.REQUESTS.prom, {"namespace": "prod", "model": "minilm", "version": "2",
                               "outcome": "overloaded", "code": "503"}, "0+1x30")], "20m"),
        ("OptiserveRolloutControllerErrors", "errors stopped over 10 minutes ago",
         _controller_error_series("0+1x5 5x30"), "25m"),
        ("OptiserveCanaryOffPrediction", "rollout no longer progressing",
         _prediction_series(0, "promoted"), "10m"),
        ("OptiserveCanaryOffPrediction", "not enough data to judge (-1)",
         _prediction_series(-1), "10m"),
    ]
    by_name = {a.name: a for a in alerts()}
    tests = []
    for name, firing, quiet, at, labels in cases:
        a = by_name[name]
        tests.append({"name": f"{name} fires", "interval": "1m", "input_series": firing,
                      "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": [{
                          "exp_labels": labels,
                          "exp_annotations": {
                              "summary": _render(a.summary, labels),
                              "description": _render(with_defaults(a.description), labels)},
                      }]}]})
        tests.append({"name": f"{name} stays quiet", "interval": "1m", "input_series": quiet,
                      "alert_rule_test": [{"eval_time": at, "alertname": name,
                                           "exp_alerts": []}]})
    for name, what, series_, at, labels in more_firing:
        a = by_name[name]
        tests.append({"name": f"{name} fires: {what}", "interval": "1m",
                      "input_series": series_,
                      "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": [{
                          "exp_labels": labels,
                          "exp_annotations": {
                              "summary": _render(a.summary, labels),
                              "description": _render(with_defaults(a.description), labels)},
                      }]}]})
    for name, what, series_, at in more_quiet:
        tests.append({"name": f"{name} stays quiet: {what}", "interval": "1m",
                      "input_series": series_,
                      "alert_rule_test": [{"eval_time": at, "alertname": name,
                                           "exp_alerts": []}]})
    missing = set(by_name) - {c[0] for c in cases}
    if missing:
        raise AssertionError(f"alerts without promtool tests: {sorted(missing)}")
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}


def _render(template: str, labels: dict[str, str]) -> str:
    """Expands the ``{{ $labels.x }}`` references the annotations use (and nothing else)."""
    import re

    def sub(m):
        return labels[m.group(1)]

    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", sub, template)
    if "{{" in out:
        raise ValueError(f"annotation uses more than $labels: {template}")
    return out
