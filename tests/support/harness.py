"""Test and benchmark harness: a real Prometheus on a free loopback port, the gateway replica's
process of a running server. (``optiserve serve`` itself is started with the product's own
:class:`optiserve.server.ServeProcess`, re-exported here.) Each process is stopped by its PID.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from optiserve.local import free_port  # one port picker, which avoids Ray's default ports
from optiserve.server import ServeProcess  # noqa: F401  (re-exported for the tests)


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
