"""Serving benchmark for minilm's chosen variant, ratios measured in one run (rounds
interleaved, medians reported):

(a) served throughput over HTTP, one sentence per request, at p99 <= 250 ms, divided by the same
    runtime called in-process (tokenization and length grouping included) at its best batch
    size — both with the threads the served replica uses and with every CPU. Each serving option
    is measured: Ray Serve's default proxy, HAProxy direct ingress, RAY_SERVE_THROUGHPUT_OPTIMIZED,
    replicas x threads. Target >= 0.85.
(b) dynamic batching on / off at the same p99 bound. Target >= 1.25x.
(c) start-up: `optiserve serve` launched with a built repository until its first answer.
    Target <= 10 s.

    python -m benchmarks.serving_minilm [--repository DIR] [--rounds 3] [--client optiserve|wrk]

The load generator runs on the same machine (as it did for the peers compared in the issue):
`optiserve bench` (Python, aiohttp) or wrk (C) with --client wrk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


from serving.config import build_serve_config, gateway_user_config
from tests.support.harness import ServeProcess
from serving.repository import ModelRepository
from serving.runtimes import (
    RuntimeOptions, TextEncoder, available_cpus, length_groups, load_runtime,
)

ROOT = Path(__file__).resolve().parent.parent

P99_BOUND_MS = 250.0
SENTENCES = ROOT / "optimizers" / "data" / "minilm_validation.txt"


def texts() -> list[str]:
    return [t.strip() for t in SENTENCES.read_text().splitlines() if t.strip()]


def in_process(repo: Path, threads: int, seconds: float, version: int | None = None
               ) -> tuple[float, int]:
    """Best rows/s over batch sizes: tokenize + group by length + run, as a replica does."""
    ref = ModelRepository(repo).open("minilm", version)
    enc = TextEncoder(ref.file("tokenizer.json"), ref.manifest.preprocessing)
    rt = load_runtime(ref.manifest, ref.path, RuntimeOptions(intra_op_threads=threads))
    data = texts()
    best = (0.0, 0)
    for b in (1, 8, 16, 32, 64):
        n, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            batch = [data[(i + k) % len(data)] for k in range(b)]
            i += b
            rows = enc.encode(batch)
            for g in length_groups([len(r) for r in rows]):
                rt.run(enc.pad([rows[j] for j in g]))
            n += b
        best = max(best, (n / (time.perf_counter() - t0), b))
    return best


def load(url: str, concurrency: int, seconds: float, client: str, work: Path) -> dict:
    if client == "wrk":
        return wrk(url, concurrency, seconds, work)
    out = subprocess.run(
        [sys.executable, "-m", "optiserve.cli.main", "bench", url, "--model", "minilm",
         "--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "1",
         "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    d = json.loads(out.stdout)
    return {"rps": d["throughput_rps"], "p99": d["latency_ms"].get("p99", 1e9),
            "errors": sum(d["errors"].values())}


def wrk(url: str, concurrency: int, seconds: float, work: Path) -> dict:
    script = work / "minilm.lua"
    if not script.exists():
        bodies = ",\n".join(json.dumps(json.dumps({"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]}))
            for t in texts())
        script.write_text(
            f"local bodies = {{\n{bodies}\n}}\nlocal i = 0\nwrk.method = 'POST'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
            "request = function()\n  i = i % #bodies + 1\n"
            "  return wrk.format(nil, nil, nil, bodies[i])\nend\n")
    out = subprocess.run(["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}",
                          f"-d{int(seconds)}s", "--latency", "-s", str(script),
                          f"{url}/v2/models/minilm/infer"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(next(line.split()[1] for line in out.splitlines()
                     if line.startswith("Requests/sec")))
    p99 = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("99%"))
    p99_ms = float(p99[:-2]) if p99.endswith("ms") else (
        float(p99[:-2]) / 1000 if p99.endswith("us") else float(p99[:-1]) * 1000)
    non2xx = [int(line.split()[-1]) for line in out.splitlines() if "Non-2xx" in line]
    return {"rps": rps, "p99": p99_ms, "errors": sum(non2xx)}


def served(repo: Path, name: str, work: Path, client: str, seconds: float,
           concurrencies: list[int], version: int | None = None) -> dict:
    """Start a server in one configuration, sweep concurrency, keep the best within the bound."""
    v = version or ModelRepository(repo).latest("minilm")
    env, extra, replicas, cpus, threads = {}, [], 1, 1.0, None
    if name == "default-proxy":
        extra, env = ["--proxy", "default"], {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    elif name == "haproxy":
        env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    elif name == "2x1-thread":
        replicas = 2
    elif name == "1x2-threads":
        cpus = 2.0
    elif name == "sized":  # what `optiserve serve` chooses with no flags (optiserve.sizing)
        from optiserve.sizing import machine_cpus, plan

        lay = plan(machine_cpus())
        replicas, cpus, threads = lay.version_replicas, lay.cpus_per_replica, lay.threads
    doc = build_serve_config(str(repo), [("minilm", v)], version_replicas=replicas,
                             version_cpus=cpus, threads=threads)
    if name == "batching-off":
        gateway_user_config(doc)["models"]["minilm"]["versions"][v]["max_batch_size"] = 1
    proc = ServeProcess(doc, work, env=env, extra_args=extra).start()
    try:
        best = {"rps": 0.0, "p99": None, "concurrency": None, "errors": 0}
        for c in concurrencies:
            r = load(proc.url, c, seconds, client, work)
            if r["errors"] == 0 and r["p99"] <= P99_BOUND_MS and r["rps"] > best["rps"]:
                best = {**r, "concurrency": c}
        return best
    finally:
        proc.stop()


def startup(repo: Path, work: Path) -> float:
    """Seconds from launching `optiserve serve` until its first 200 answer."""
    from tests.support.harness import free_port

    port, mport, dport = free_port(), free_port(), free_port()
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "data": ["hello"]}]}).encode()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "optiserve.cli.main", "serve", "--repository", str(repo),
         "--port", str(port), "--metrics-port", str(mport), "--dashboard-port", str(dport)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        while time.perf_counter() - t0 < 120:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/minilm/infer",
                                             data=body, method="POST")
                if urllib.request.urlopen(req, timeout=2).status == 200:
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("no answer in 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="per load measurement")
    ap.add_argument("--client", choices=["optiserve", "wrk"], default="optiserve")
    ap.add_argument("--configs", default="default-proxy,haproxy,haproxy+throughput-optimized,"
                                         "2x1-thread,1x2-threads,batching-off")
    ap.add_argument("--concurrency", default="8,16,32,64")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--version", type=int, help="Version to serve [default: the newest].")
    args = ap.parse_args()
    if args.client == "wrk" and not shutil.which("wrk"):
        sys.exit("--client wrk needs wrk (Debian package 'wrk')")
    work = Path(tempfile.mkdtemp(prefix="optiserve-servebench-"))
    repo = args.repository
    if repo is None:
        repo = work / "repo"
        print("optimizing minilm (publish best) ...", flush=True)
        subprocess.run([sys.executable, "-m", "optiserve.cli.main", "optimize", "minilm",
                        "--repository", str(repo), "-q"], check=True, cwd=work)
    configs = args.configs.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cpus = available_cpus()
    inproc = {"1-thread": [], f"{cpus}-threads": []}
    res: dict[str, list] = {c: [] for c in configs}
    starts = []
    for r in range(args.rounds):
        inproc["1-thread"].append(in_process(repo, 1, 3.0, args.version))
        inproc[f"{cpus}-threads"].append(in_process(repo, cpus, 3.0, args.version))
        for c in configs:
            res[c].append(served(repo, c, work, args.client, args.seconds, concurrencies,
                                 args.version))
            print(f"round {r + 1}: {c}: {res[c][-1]}", flush=True)
        starts.append(startup(repo, work))
        print(f"round {r + 1}: in-process {[v[-1] for v in inproc.values()]}, "
              f"start-up {starts[-1]:.1f} s", flush=True)
    med_in = {k: statistics.median(x[0] for x in v) for k, v in inproc.items()}
    print(f"\nclient {args.client}; {args.rounds} interleaved rounds, medians; "
          f"p99 bound {P99_BOUND_MS:.0f} ms")
    for k, v in med_in.items():
        print(f"in-process, {k}: {v:.1f} rows/s (best batch sizes "
              f"{[x[1] for x in inproc[k]]})")
    print(f"\n{'serving option':32} {'req/s':>8} {'vs 1-thread':>12} {'vs all CPUs':>12}")
    summary = {}
    for c in configs:
        rps = statistics.median(x["rps"] for x in res[c])
        summary[c] = rps
        print(f"{c:32} {rps:8.1f} {rps / med_in['1-thread']:12.2f} "
              f"{rps / med_in[f'{cpus}-threads']:12.2f}")
    if "batching-off" in summary and "haproxy+throughput-optimized" in summary:
        on = [x["rps"] for x in res["haproxy+throughput-optimized"]]
        off = [x["rps"] for x in res["batching-off"]]
        ratio = statistics.median(a / b for a, b in zip(on, off) if b)
        print(f"\n(b) dynamic batching on / off at p99 <= {P99_BOUND_MS:.0f} ms: {ratio:.2f}x")
    print(f"(c) start-up to first answer: median {statistics.median(starts):.1f} s "
          f"({', '.join(f'{s:.1f}' for s in starts)})")
    if args.json:
        args.json.write_text(json.dumps({"in_process": inproc, "served": res,
                                         "startup_s": starts, "client": args.client}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
