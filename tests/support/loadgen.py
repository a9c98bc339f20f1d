"""Load and CPU measurement for the serving benchmarks: a server command in its own process
group, wrk and ``optiserve bench`` load, CPU seconds per request of a process tree by group.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from serving.repository import ModelRepository

from .harness import free_port

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ROOT / "optimizers" / "data" / "minilm_validation.txt"

def texts() -> list[str]:
    return [t.strip() for t in SENTENCES.read_text().splitlines() if t.strip()]


def oip_body(sentences: list[str], batched: bool) -> bytes:
    """An OIP JSON request; batched: Triton's batch dimension ([n, 1]), else optiserve's [n]."""
    shape = [len(sentences), 1] if batched else [len(sentences)]
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape,
                                   "data": sentences}]}).encode()


def infer(url: str, sentences: list[str], batched: bool, timeout: float = 10) -> np.ndarray:
    req = urllib.request.Request(f"{url}/v2/models/minilm/infer",
                                 data=oip_body(sentences, batched),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


class Server:
    """A server command in its own session on a free loopback port; stop() ends its group."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, batched: bool,
                 env: dict | None = None, cwd: Path | None = None,
                 ready_path: str | None = None):
        """``ready_path``: a GET answered 200 once the server is ready (e.g.
        ``/v2/health/ready``); without it, readiness is a minilm inference."""
        self.name, self.cmd, self.log_path, self.batched = name, cmd, log, batched
        self.ready_path = ready_path
        self.cwd = cwd or ROOT
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "COLUMNS": "200", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> Server:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if self.ready_path:
                    urllib.request.urlopen(self.url + self.ready_path, timeout=5).close()
                else:
                    infer(self.url, ["warm"], self.batched, timeout=5)
                return self
            except urllib.error.HTTPError as e:
                # a health check's refusal is "not yet"; an inference's other than 404/503 is a
                # wrong request
                if e.code not in (404, 503) and not self.ready_path:
                    self.stop()
                    raise RuntimeError(f"{self.name} answered {e.code}: "
                                       f"{e.read()[:500]!r}") from None
                time.sleep(0.3)
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout} s:\n"
                           + self.log_path.read_text()[-3000:])

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's PID is the group's id
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the leader shuts its own children down
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever of the group is left
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


def group_name(pid: int) -> str:
    """A process's group: Ray's process title (less the method it runs now), the dashboard's
    module processes, a Python script, module or -c import, or the executable."""
    argv = [a.decode(errors="replace") for a in
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):  # e.g. ray::ServeController.listen_for_change
        return argv[0].split()[0].split(".")[0]
    if argv[0].startswith("ray-dashboard-"):  # ray-dashboard-JobHead-0 (python -c ...)
        return "ray-dashboard modules"
    if "optiserve" in argv and "serve" in argv:  # python -m optiserve serve ...
        return "optiserve serve (driver)"
    exe = Path(argv[0]).name
    if exe.startswith("python"):
        for i, a in enumerate(argv[1:-1], 1):
            if a == "-m":
                return argv[i + 1]
            if a == "-c":  # multiprocessing's helpers: from multiprocessing.forkserver import..
                words = argv[i + 1].split()
                return f"python -c {words[1] if len(words) > 1 else ''}".strip()
            if a.endswith(".py"):
                return Path(a).name
        if argv[-1].endswith(".py"):
            return Path(argv[-1]).name
    return exe


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (group, utime + stime in s)} of root and all its descendants."""
    import psutil

    tick = os.sysconf("SC_CLK_TCK")
    try:
        pids = [root, *(p.pid for p in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return {}
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (group_name(pid), (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """CPU seconds per request by group between two tree_cpu readings."""
    groups: dict[str, float] = {}
    for pid, (group, t) in after.items():
        groups[group] = groups.get(group, 0.0) + t - before.get(pid, (group, 0.0))[1]
    return {g: s / max(requests, 1) for g, s in sorted(groups.items())}


def wrk_script(work: Path, batched: bool) -> Path:
    script = work / f"minilm{'-batched' if batched else ''}.lua"
    bodies = ",\n".join(f"[==[{oip_body([t], batched).decode()}]==]" for t in texts())
    script.write_text(
        f"local bodies = {{\n{bodies}\n}}\nlocal i = 0\nwrk.method = 'POST'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        "request = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n")
    return script


def wrk(url: str, concurrency: int, seconds: float, script: Path) -> dict:
    out = subprocess.run(["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}",
                          f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
                          "-s", str(script), f"{url}/v2/models/minilm/infer"],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    lines = [line.strip() for line in out.splitlines()]
    rps = float(next(line.split()[1] for line in lines if line.startswith("Requests/sec")))
    total = int(next(line.split()[0] for line in lines if " requests in " in line))
    p99 = next(line.split()[1] for line in lines if line.startswith("99%"))
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
    unit = next(u for u in ("us", "ms", "s", "m") if p99.endswith(u))
    errors = sum(int(line.split()[-1]) for line in lines if line.startswith("Non-2xx"))
    for line in lines:
        if line.startswith("Socket errors:"):
            errors += sum(int(x.strip(",")) for x in line.split()[3::2])
    return {"rps": rps, "p99_ms": float(p99[:-len(unit)]) * scale[unit], "requests": total,
            "errors": errors}


def client_cpu() -> float:
    """CPU seconds of this process (optiserve bench's client runs in it) and its reaped
    children (wrk)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq) / tick, steal / tick


def measured(server: Server, run) -> dict:
    """A load run with the server tree's CPU per request by process group, the load
    generator's, and what the rest of the machine used meanwhile (cores; others' work here
    shows as interference)."""
    before, c0, m0, t0 = tree_cpu(server.proc.pid), client_cpu(), machine_cpu(), time.monotonic()
    r = run()
    after, c1, m1, wall = tree_cpu(server.proc.pid), client_cpu(), machine_cpu(), \
        time.monotonic() - t0
    n = max(r["requests"], 1)
    r["cpu_s_per_request"] = cpu_per_request(before, after, n)
    r["client_cpu_s_per_request"] = (c1 - c0) / n
    ours = (c1 - c0) + n * sum(r["cpu_s_per_request"].values())
    r["other_cores"] = max(0.0, (m1[0] - m0[0] - ours) / wall)
    r["steal_cores"] = (m1[1] - m0[1]) / wall
    return r


def tree_total(server: Server) -> float:
    return sum(t for _, t in tree_cpu(server.proc.pid).values())


def settle(server: Server, quiet_cores: float = 0.25, timeout: float = 30) -> tuple[float, float]:
    """Wait until the server's start-up work is done (its tree under quiet_cores for 1 s), then
    measure what it uses idle for 3 s: (seconds waited, idle cores)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = tree_total(server)
        time.sleep(1.0)
        if tree_total(server) - a < quiet_cores:
            break
    waited, a = time.monotonic() - t0, tree_total(server)
    time.sleep(3.0)
    return waited, (tree_total(server) - a) / 3.0


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def optiserve_command(repo: Path, version: int, port: int, flags: str) -> list[str]:
    return [sys.executable, "-m", "optiserve", "serve", f"minilm:{version}",
            "--repository", str(repo), "--port", str(port), "--metrics-port", str(free_port()),
            "--dashboard-port", str(free_port()), *shlex.split(flags)]


def pick_version(repo: ModelRepository) -> int:
    """The newest onnx-int8-dynamic version of minilm, else the newest ONNX one."""
    onnx = [v for v in reversed(repo.versions("minilm"))
            if repo.get("minilm", v).manifest.runtime == "onnxruntime"]
    if not onnx:
        sys.exit(f"minilm has no ONNX version in {repo.root}: Triton's side needs model.onnx")
    return next((v for v in onnx if repo.get("minilm", v).manifest.variant
                 == "onnx-int8-dynamic"), onnx[0])
