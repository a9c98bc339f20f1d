"""Run a real ``optiserve serve`` and a real Prometheus as subprocesses on free loopback ports.

Used by the integration tests and the benchmarks; each is stopped by its own PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .local import free_port  # one port picker, which avoids Ray's default ports


def gateway_replica(serve_pid: int):
    """The gateway replica's process (a child of ``optiserve serve``), for memory readings."""
    import psutil

    for p in psutil.Process(serve_pid).children(recursive=True):
        try:
            if "ServeReplica:optiserve:gateway" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    raise LookupError("no gateway replica process")


class ServeProcess:
    """A real ``optiserve serve --config`` in a subprocess, on free ports; stop() by PID."""

    def __init__(self, config: dict, workdir: Path, env: dict | None = None,
                 extra_args: list[str] | None = None):
        import yaml

        self.port, self.metrics_port, self.dashboard_port = free_port(), free_port(), free_port()
        config = dict(config)
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        self.config_path = workdir / f"serve-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / f"serve-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.serve_api = f"http://127.0.0.1:{self.dashboard_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self._env = env or {}
        self._extra = extra_args or []
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> ServeProcess:
        import time

        full_env = {**os.environ, "COLUMNS": "200", **self._env}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli.main", "serve", "--config", str(self.config_path),
             "--metrics-port", str(self.metrics_port), "--dashboard-port",
             str(self.dashboard_port), *self._extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            if "Ctrl-C to stop" in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"optiserve serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"optiserve serve not ready in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 90) -> int | None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)
        finally:
            self._log.close()


class PrometheusProcess:
    """A real Prometheus server on a free loopback port scraping the given targets every 1 s."""

    def __init__(self, workdir: Path, targets: dict[str, str], rule_files: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = workdir / f"prometheus-{self.port}"
        self.dir.mkdir(parents=True)
        jobs = "\n".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']"
            for job, addr in targets.items())
        rules = ""
        if rule_files:
            rules = "rule_files:\n" + "\n".join(f"  - {r}" for r in rule_files) + "\n"
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + rules
            + "scrape_configs:\n" + jobs + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrometheusProcess:
        import time
        import urllib.request

        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready: " + (self.dir / "log").read_text())

    def query(self, expr: str) -> list[dict]:
        import json
        import urllib.parse
        import urllib.request

        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30, predicate=lambda r: bool(r)) -> list[dict]:
        import time

        deadline = time.monotonic() + timeout
        result = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr} did not produce the expected data in {timeout} s: {result}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
