"""Run optiserve on an embedded local Ray cluster: start, deploy, serve, shut down cleanly."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass

from serving.settings import settings
from serving.config import (
    GATEWAY_APP, GATEWAY_RESOURCE, MODEL_RESOURCE, validate_serve_config,
)
from .ray_head import HeadStart
from .serve_api import ServeAPI, wait_running


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


#: Ports Ray takes by default whatever else is configured (GCS, client server, dashboard,
#: dashboard agent HTTP/gRPC, metrics agent): a "free" port equal to one of them collides later.
#: the largest gateway -> replica handle call (gRPC's own ceiling, 2 GiB - 1); the chart sets
#: the same
REPLICA_MESSAGE_BYTES = str(2**31 - 1)
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365, 52366, 8076})


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now on the loopback interface, never one Ray takes by default, nor one this
    process was already given (the kernel may hand the same free port out twice in a row: a
    dashboard and a metrics port chosen back to back once collided)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS and port not in _GIVEN:
            if len(_GIVEN) >= 4096:
                _GIVEN.clear()
            _GIVEN.add(port)
            return port


@dataclass
class LocalOptions:
    metrics_port: int = 8080
    dashboard_port: int = 8265
    #: the gateway replicas' gRPC port (on the HTTP host); None: no gRPC
    grpc_port: int | None = None
    num_cpus: float | None = None
    #: [default: OPTISERVE_METRICS_REPORT_INTERVAL_MS]
    metrics_interval_ms: int | None = None


def requested_cpus(doc: dict) -> float:
    total = 0.0
    for app in doc.get("applications", []):
        for dep in app.get("deployments") or []:
            replicas = dep.get("num_replicas") or (dep.get("autoscaling_config") or {}).get(
                "max_replicas") or 1
            if replicas == "auto":
                replicas = 1
            cpus = (dep.get("ray_actor_options") or {}).get("num_cpus", 1)
            total += float(replicas) * float(cpus)
    return total


def wait_listening(host: str, port: int, timeout_s: float = 30.0) -> None:
    """Wait until something accepts connections on host:port (the gateway's listener starts
    just after its replica reports RUNNING)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1",
                                           port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway is RUNNING but nothing listens on {host}:{port}; "
                                   "see the gateway replica's log") from None
            time.sleep(0.1)


def deploy_config(client, doc: dict) -> None:
    """Apply a whole declarative config through Serve's controller, as the REST API's PUT
    does (same schema, same ``apply_config``), without the dashboard in between."""
    from ray.exceptions import RayTaskError
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(doc)
    try:
        if config.logging_config:
            client.update_global_logging_config(config.logging_config)
        client.deploy_apps(config)
    except RayTaskError as e:
        raise RuntimeError(f"Serve refused the config: {e}") from None


class LocalCluster:
    """An embedded Ray cluster serving one config: start(), then stop()."""

    def __init__(self, doc: dict, opts: LocalOptions):
        self.doc = validate_serve_config(doc)
        self.opts = opts
        self.api: ServeAPI | None = None
        self.head: HeadStart | None = None

    def _environment(self) -> None:
        """What the cluster's processes read: set before ray.init, which hands the driver's
        environment to every worker (the gateway replicas read OPTISERVE_* from it)."""
        env = os.environ
        s = settings()
        env.setdefault("RAY_metrics_report_interval_ms",
                       str(self.opts.metrics_interval_ms or s.metrics_report_interval_ms))
        # user code and the handle router on the replica's own event loop, handles over gRPC:
        # 637 -> 866 req/s served (MiniLM INT8, 2 cores, measured)
        env.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # those gRPC handle calls are capped at 4 MiB by default: a batch of 32 decoded 224x224
        # images is 19 MiB. Requests are bounded by max_body_bytes and the pixel budgets, so the
        # gateway -> replica hop takes any batch they make
        env.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", REPLICA_MESSAGE_BYTES)
        # a replica that cannot be scheduled is reported (with Serve's reason) after 10 s
        env.setdefault("RAY_SERVE_SLOW_STARTUP_WARNING_S", str(s.slow_startup_report_s))
        env.setdefault("RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S", str(s.slow_startup_report_s))
        # THROUGHPUT_OPTIMIZED turns on direct ingress: an idle HTTP server in each replica,
        # which the gateway's own server replaces
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
        # the raylet connects to its own object store thread once, and on a lost race sleeps
        # this long before the next try: 1 s (Ray's default) in 14 of 51 starts seen here;
        # same 10 s budget in 100 ms steps
        env.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "100")
        env.setdefault("RAY_raylet_client_num_connect_attempts", "100")
        # Serve's controller reconcile period (a deploy waits for it at each step)
        env.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", f"{s.serve_control_loop_interval_s:g}")
        http = self.doc.get("http_options") or {}
        env["OPTISERVE_LISTEN"] = f"{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
        if self.opts.grpc_port:
            host = http.get("host", "127.0.0.1")
            env["OPTISERVE_GRPC_LISTEN"] = f"{host}:{self.opts.grpc_port}"
        else:
            env.pop("OPTISERVE_GRPC_LISTEN", None)

    def start(self, on_status=lambda _s: None) -> None:
        """Start Ray, Serve and the applications; ``self.timings`` says where the time went
        (phase -> seconds, in order)."""
        import time

        self.timings: dict[str, float] = {}
        t = [time.perf_counter()]

        def phase(name: str) -> None:
            now = time.perf_counter()
            self.timings[name] = now - t[0]
            t[0] = now

        import ray

        phase("import Ray")
        http = self.doc.get("http_options") or {}
        port, host = http.get("port", 8000), http.get("host", "127.0.0.1")
        busy = [p for p in (port, self.opts.grpc_port, self.opts.metrics_port,
                            self.opts.dashboard_port) if p and not port_free(p)]
        if busy:
            raise RuntimeError(f"port(s) {', '.join(map(str, busy))} are in use; choose others "
                               "with --port / --grpc-port / --metrics-port / --dashboard-port")
        self._environment()
        cpus = self.opts.num_cpus or max(float(os.cpu_count() or 1),
                                         math.ceil(requested_cpus(self.doc) + 0.5))
        on_status({"ray": "starting"})
        self.head = HeadStart(f"127.0.0.1:{self.opts.dashboard_port}")
        with self.head.deferring():
            ray.init(
                num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                # gateway replicas may run here, as many as asked (SO_REUSEPORT shares the port)
                # model replicas too (a canary sharing its stable's CPUs asks for this one)
                resources={GATEWAY_RESOURCE: 1000, MODEL_RESOURCE: 1000},
                dashboard_port=self.opts.dashboard_port,
                _metrics_export_port=self.opts.metrics_port,
                namespace="optiserve", log_to_driver=False, configure_logging=False,
            )
        phase("start the Ray cluster (ray.init)")
        from ray.serve._private.api import serve_start

        # no Serve proxy at all; a config PUT later cannot start one (Serve keeps the http
        # options and proxy location it started with), so the port stays the gateways'
        client = serve_start(http_options={"host": "127.0.0.1", "port": free_port()},
                             proxy_location="Disabled")
        phase("start Serve's controller (serve.start)")
        deploy_config(client, self.doc)
        phase("submit the config (Serve controller)")
        names = [a["name"] for a in self.doc["applications"]]
        wait_running(client.get_serve_details, names, on_status=on_status)
        phase("deploy the applications (replicas start, models load)")
        wait_listening(host, port)
        if self.opts.grpc_port:
            wait_listening(host, self.opts.grpc_port)
        phase("gateway listening")
        self.url = f"http://{host}:{port}"

    def start_dashboard(self) -> float:
        """Start what ``ray.init`` deferred (see ``optiserve/ray_head.py``) once serving: Ray's
        dashboard, whose Serve REST API ``optiserve rollout``, ``tune`` and KubeRay-style
        clients use, the autoscaler monitor and the log monitor; returns the seconds it took."""
        import time

        t0 = time.perf_counter()
        if self.head is not None:
            self.head.start_deferred()
        self.api = ServeAPI(f"http://127.0.0.1:{self.opts.dashboard_port}")
        return time.perf_counter() - t0

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            finally:
                ray.shutdown()


__all__ = ["LocalCluster", "LocalOptions", "GATEWAY_APP", "free_port", "port_free"]
