"""``optiserve serve --config`` in a subprocess on free loopback ports, stopped by its PID.

``optiserve tune`` starts its own server this way (and the integration tests and benchmarks
do too). Readiness is what a client can check, not what the server prints: every application
of the config RUNNING in Serve's REST API, then the inference port accepting connections and
answering ``/v2/health/ready``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .local import free_port, wait_listening
from .serve_api import ServeAPI, ServeAPIError


class ServerExited(RuntimeError):
    """The server process ended before it was ready; the message holds its log's tail."""


def wait_ready(api: ServeAPI, names: list[str], host: str, port: int, timeout_s: float,
               alive=lambda: True, on_status=lambda _s: None) -> None:
    """Wait until the named applications are RUNNING (Serve's REST API), then until the
    inference port listens and ``/v2/health/ready`` answers 200. ``alive()`` false stops the
    wait at once (a server that exited never becomes ready)."""
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while True:
        if not alive():
            raise ServerExited("the server exited while starting")
        try:
            apps = api.details().get("applications") or {}
        except ServeAPIError:
            apps = None  # the dashboard is not up yet
        if apps is not None:
            last = {n: (apps.get(n) or {}).get("status", "NOT_STARTED") for n in names}
            on_status(last)
            failed = {n: (apps[n].get("message") or "").strip()[-1500:] for n, s in last.items()
                      if s in ("DEPLOY_FAILED", "UNHEALTHY")}
            if failed:
                raise ServeAPIError("deployment failed: " + "; ".join(
                    f"{n}: {m}" for n, m in failed.items()))
            if all(s == "RUNNING" for s in last.values()):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not running after {timeout_s:.0f} s: "
                               f"{last or 'the Serve API did not answer'}")
        time.sleep(0.2)
    wait_listening(host, port, max(1.0, deadline - time.monotonic()))
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/v2/health/ready"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not alive():
            raise ServerExited("the server exited while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.1)


class ServeProcess:
    """A real ``optiserve serve --config`` in a subprocess, on free ports; stop() by PID."""

    def __init__(self, config: dict, workdir: Path, env: dict | None = None,
                 extra_args: list[str] | None = None):
        import yaml

        self.port, self.metrics_port, self.dashboard_port = free_port(), free_port(), free_port()
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        config = dict(config)
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        self.config = config
        self.config_path = workdir / f"serve-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / f"serve-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.serve_api = f"http://127.0.0.1:{self.dashboard_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self._env = env or {}
        self._extra = extra_args or []
        self.proc: subprocess.Popen | None = None
        self._log = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 180) -> ServeProcess:
        full_env = {**os.environ, "COLUMNS": "200", **self._env}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "optiserve", "serve", "--config", str(self.config_path),
             "--metrics-port", str(self.metrics_port), "--dashboard-port",
             str(self.dashboard_port), "--grpc-port", str(self.grpc_port), *self._extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True,
        )
        names = [a["name"] for a in self.config.get("applications", [])]
        try:
            wait_ready(ServeAPI(self.serve_api, timeout_s=2.0), names, "127.0.0.1", self.port,
                       timeout, alive=self.alive)
        except ServerExited:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"optiserve serve exited {self.proc.returncode}:\n"
                               f"{self.log_path.read_text()}") from None
        except (TimeoutError, ServeAPIError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"optiserve serve not ready: {e}\n"
                               f"{self.log_path.read_text()}") from None
        return self

    def stop(self, timeout: float = 90) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            if self._log is not None:
                self._log.close()
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)
        finally:
            self._log.close()


__all__ = ["ServeProcess", "ServerExited", "wait_ready"]
