"""Gateway scale-out: N gateway replicas in front of one model replica. Do batches stay full?

On a GPU node the model is fast and the Python gateway (HTTP, decoding, tokenization, batching)
becomes the bottleneck, so the gateway scales horizontally: N replicas, each batching the share
of connections the kernel gives it (they share the port, ``SO_REUSEPORT``). Each replica forms
its own batches, so a model replica sees N streams of smaller batches; this measures how much
smaller, and what N buys.

For each N (``--gateways``) it starts ``optiserve serve minilm:V --gateway-replicas N --replicas
1`` and loads it with wrk (closed loop, ``--concurrency`` connections, one sentence per request),
rounds interleaved (every N once per round), medians. Per point: requests/s, p99, mean batch
size (rows per model call, from the gateway's ``optiserve_batch_size`` histogram on the metrics
endpoint, before/after), and CPU ms per request of the gateway replicas and of the model replica.

    python -m benchmarks.gateway_scaleout --repository /tmp/work/repo [--version V]
        [--gateways 1,2,3] [--concurrency 16,64] [--rounds 3] [--seconds 8]

Requires wrk (``apt-get install -y wrk``). Numbers measured here are in the README ("Sizing the
gateway").
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support import loadgen as vs

from tests.support.harness import free_port
from serving.repository import ModelRepository

_SERIES = re.compile(r'^(ray_optiserve_batch_size_(?:sum|count))\{([^}]*)\}\s+([0-9.eE+-]+)$')


def batch_totals(metrics_url: str, model: str) -> tuple[float, float]:
    """(rows, batches) the gateways dispatched for ``model`` so far (all replicas summed)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    rows = batches = 0.0
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m and f'model="{model}"' in m.group(2):
            if m.group(1).endswith("_sum"):
                rows += float(m.group(3))
            else:
                batches += float(m.group(3))
    return rows, batches


def settle_metrics(metrics_url: str, model: str, timeout: float = 20.0) -> tuple[float, float]:
    """The totals once they stop moving (counters are pushed every 1-2 s)."""
    last, t0 = batch_totals(metrics_url, model), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(2.5)
        now = batch_totals(metrics_url, model)
        if now == last:
            return now
        last = now
    return last


def point(server: vs.Server, metrics_url: str, conc: int, seconds: float, script: Path) -> dict:
    vs.wrk(server.url, conc, 2, script)  # warm-up at this concurrency
    rows0, batches0 = settle_metrics(metrics_url, "minilm")
    before = vs.tree_cpu(server.proc.pid)
    r = vs.wrk(server.url, conc, seconds, script)
    after = vs.tree_cpu(server.proc.pid)
    rows1, batches1 = settle_metrics(metrics_url, "minilm")
    cpu = vs.cpu_per_request(before, after, max(r["requests"], 1))
    r["mean_batch"] = (rows1 - rows0) / max(batches1 - batches0, 1)
    r["gateway_ms"] = 1000 * sum(v for k, v in cpu.items() if "gateway" in k)
    r["model_ms"] = 1000 * sum(v for k, v in cpu.items() if "minilm" in k)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model-repository"))
    ap.add_argument("--version", type=int, default=None)
    ap.add_argument("--gateways", default="1,2,3")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    repo = ModelRepository(args.repository)
    version = args.version or vs.pick_version(repo)
    work = Path(tempfile.mkdtemp(prefix="optiserve-scaleout-"))
    script = vs.wrk_script(work, False)
    gateways = [int(n) for n in args.gateways.split(",")]
    concs = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[int, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for n in gateways:
            port, mport = free_port(), free_port()
            cmd = vs.optiserve_command(args.repository.resolve(), version, port,
                                       f"--gateway-replicas {n} --replicas 1")
            i = cmd.index("--metrics-port")
            cmd[i + 1] = str(mport)
            server = vs.Server(f"gw{n}", cmd, port, work / f"gw{n}-{rnd}.log", False).start()
            try:
                vs.settle(server)
                for c in concs:
                    r = point(server, f"http://127.0.0.1:{mport}/metrics", c, args.seconds,
                              script)
                    results.setdefault((n, c), []).append(r)
                    print(f"round {rnd + 1} gateways {n} conc {c}: {r['rps']:.0f} req/s p99 "
                          f"{r['p99_ms']:.0f} ms mean batch {r['mean_batch']:.2f} gateway "
                          f"{r['gateway_ms']:.2f} ms/req model {r['model_ms']:.2f} ms/req",
                          flush=True)
            finally:
                server.stop()
    print(f"\nminilm:{version}, 1 model replica, medians of {args.rounds} rounds, "
          f"{args.seconds:.0f} s each")
    print(f"{'gateways':>8} {'conns':>5} {'req/s':>7} {'p99 ms':>7} {'mean batch':>10} "
          f"{'gateway ms/req':>14} {'model ms/req':>12}")
    for (n, c), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        def med(key):
            return statistics.median(r[key] for r in rows)
        print(f"{n:>8} {c:>5} {med('rps'):>7.0f} {med('p99_ms'):>7.0f} {med('mean_batch'):>10.2f} "
              f"{med('gateway_ms'):>14.2f} {med('model_ms'):>12.2f}")


if __name__ == "__main__":
    main()
