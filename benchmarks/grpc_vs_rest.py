"""optiserve over gRPC vs over REST vs Triton Inference Server 2.51 over gRPC (and REST), the same
artifacts, measured in one run (rounds interleaved, medians reported) with the same load
generator for all (``optiserve bench``'s closed loop, optiserve.bench.run_bench, in this
process):

(a) minilm, one sentence per request;
(b) a tensor model, 64-row FP32 requests (raw tensors over gRPC, the binary extension over REST);

each over REST, unary gRPC (ModelInfer) and streamed gRPC (ModelStreamInfer, one stream per
client in flight, as perf_analyzer --streaming: ``optiserve bench --streaming``).

Servers, one on the machine at a time (an idle Ray cluster still uses CPU): each round starts
one ``optiserve serve`` (both models, each version with ``--cpus`` CPUs, default the Triton
models' intra-op threads; both protocols; the tensor model's max_batch_size 256 so
that 64-row requests fit), measures it, stops it, then does the same with Triton; the next round
starts with the other server. Within a server the protocols alternate at each step, in the
other order every other round.

Triton side: the binary in the ``nvidia-pytriton==0.7.0`` wheel (python backend), installed on
first use into ``--cache`` (tests/support/triton.py). minilm is the python-backend model that
tokenizes the merged requests with the version's ``tokenizer.json`` and runs one ONNX Runtime
call per batch on the same ``model.onnx`` (max_batch_size: the manifest's, as optiserve's); the
tensor model is a generic python-backend ONNX Runtime model on the same ``model.onnx``, inputs
and outputs from the manifest's ``model_signature``, max_batch_size 256 as optiserve's. Both
with ``--triton-threads`` intra-op threads (the machine's CPUs) and
``dynamic_batching { max_queue_delay_microseconds: --triton-delay-us }``. Triton's inputs carry
its batch dimension ([1, 1] for a sentence): every server's requests are shaped from its own
model metadata. At each server's first start a few requests check that both answer the same
numbers (min cosine for minilm's embeddings, max abs difference for the tensor model).

For each server, protocol and case: the best rows/s among the concurrencies whose p99 <= 250 ms
with no errors, and p50/p99 there; the ratios optiserve gRPC (unary and streamed) / optiserve
REST and / Triton gRPC (and streamed / Triton streamed, optiserve REST / Triton REST) per round
and their median; CPU per
request of the server's process tree (tests/support/loadgen.py: utime + stime of the server and
all its descendants), in total and of its front process: optiserve's gateway replica,
``tritonserver`` for Triton (whose model work is in its python stub). Warm-up included in the
CPU, counted per request of the whole run. Targets (issue 24): optiserve gRPC >= optiserve REST,
and >= 0.9 of Triton's gRPC, in max rate at p99 <= 250 ms.

    python -m benchmarks.grpc_vs_rest --repository DIR [--rounds 3] [--seconds 5]
        [--concurrency 8,32,64] [--triton-protocols grpc,http] [--json out.json]

DIR holds ``minilm`` (an ONNX version: ``--minilm-version``, default the newest
onnx-int8-dynamic one, as benchmarks/serving_vs_triton.py) and a tensor
model (``--tensor-model``, default ``tiny``: the classifier of tests/fixtures/tiny_models.py,
input x FP32 [-1, 16], an onnx-fp32 version). To add ``tiny`` to a repository that has minilm:

    optiserve optimize tests.fixtures.tiny_models:classifier --input x:FP32:-1,16 \\
        --task classification --name tiny --variants onnx-fp32 --min-time 0.1 \\
        --batch-sizes 1,8 --repository DIR -q

Measured here (2026-12-04, 2 cores, minilm:1 onnx-int8-dynamic max_batch_size 8, tiny:1
onnx-fp32 max_batch_size 256, both served at once, each optiserve version with 2 CPUs (two
single-thread lanes) and each Triton model with 2 intra-op threads, `--rounds 3 --seconds 5`,
concurrency 8, 32, 64; 755 s): best rows/s at p99 <= 250 ms, medians (per round), and CPU us per
request of the server's tree (front: gateway replica / tritonserver), medians over all points:

    case      server/protocol         rows/s                              CPU     front
    sentence  optiserve REST             758 (758, 759, 648)              2837     483
              optiserve gRPC             550 (440, 598, 550)              3405     871
              optiserve gRPC stream      717 (714, 721, 717)              2643     486
              Triton gRPC                715 (706, 715, 721)              2404     138
              Triton gRPC stream         714 (680, 714, 734)              2430     121
              Triton REST                653 (653, 653, 669)              2543     227
    tensor64  optiserve REST          167718 (151398, 167718, 178202)      520     298
              optiserve gRPC           60186 (58611, 60186, 61555)        1698     989
              optiserve gRPC stream   164032 (151514, 164032, 180826)      534     322
              Triton gRPC             419008 (424358, 386867, 419008)      171     105
              Triton gRPC stream      404250 (436173, 404250, 398234)      161      99
              Triton REST             350195 (349235, 350195, 378982)      224     166

Ratios (medians of the per-round ratios): optiserve gRPC / REST 0.79 (sentence), 0.36 (tensors);
streamed 0.95 (0.94, 0.95, 1.11) and 1.00 (1.00, 0.98, 1.01). optiserve gRPC / Triton gRPC 0.76
and 0.15; streamed 1.01 and 0.42 (target 0.9: met for sentences, not for 64-row tensors, where
optiserve's REST is 0.47 of Triton's REST too). Same answers from both servers (min cosine
1.000000; tensors max abs difference 0). Why unary gRPC costs a Python server more than REST, and
streams do not: benchmarks/grpc_floor.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from optiserve.bench import BenchOptions, fetch_metadata, load_inputs, run_bench
from serving.config import build_serve_config, gateway_user_config
from serving.repository import ModelNotFoundError, ModelRepository
from serving.runtimes import available_cpus
from tests.support.harness import ServeProcess, free_port
from tests.support.loadgen import (
    Server,
    client_cpu,
    cpu_per_request,
    pick_version,
    settle,
    tree_cpu,
)
from tests.support.triton import (
    triton_command,
    triton_install,
    triton_repository,
    triton_tensor_model,
)

P99_BOUND_MS = 250.0
TENSOR_ROWS = 64
#: the tensor model's max_batch_size on both servers: 64-row requests must fit, merged
TENSOR_BATCH = 256
TARGET_VS_TRITON = 0.9
#: the ratios reported, and the targets of issue 24 (optiserve gRPC, unary or streamed, >= its
#: REST and >= 0.9 of Triton's unary gRPC)
RATIOS = [("optiserve/grpc", "optiserve/http"), ("optiserve/grpc-stream", "optiserve/http"),
          ("optiserve/grpc", "triton/grpc"), ("optiserve/grpc-stream", "triton/grpc"),
          ("optiserve/grpc-stream", "triton/grpc-stream"), ("optiserve/http", "triton/http")]
TARGETS = {("optiserve/grpc", "optiserve/http"): 1.0,
           ("optiserve/grpc-stream", "optiserve/http"): 1.0,
           ("optiserve/grpc", "triton/grpc"): TARGET_VS_TRITON,
           ("optiserve/grpc-stream", "triton/grpc"): TARGET_VS_TRITON}
#: the process whose CPU is the server's front (protocol handling) in each tree
FRONT = {"optiserve": "ServeReplica:optiserve:gateway", "triton": "tritonserver"}


def case_inputs(meta: dict, rows: int) -> list[dict[str, np.ndarray]]:
    """One request row each, shaped from the server's own metadata (Triton's batch dimension
    included); the tensor rows are the same numbers on every server (seeded)."""
    if rows == 1:
        return load_inputs(None, meta)
    rng = np.random.default_rng(0)
    spec = meta["inputs"][0]
    width = spec["shape"][1] if spec["shape"][1] > 0 else 16
    return [{spec["name"]: rng.standard_normal((1, width)).astype(np.float32)}
            for _ in range(256)]


class Running:
    """A started server: its name, URL per protocol, process (the root of its tree, leader
    of its own process group), and how to stop it."""

    def __init__(self, name: str, urls: dict[str, str], proc, stop):
        self.name, self.urls, self.proc, self._stop = name, urls, proc, stop
        self.pid = proc.pid

    def stop(self) -> None:
        self._stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):  # what is left of its process group
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)


def start_optiserve(doc: dict, work: Path) -> Running:
    server = ServeProcess(doc, work).start()  # its own session: the group id is its PID
    return Running("optiserve", {"http": server.url, "grpc": server.grpc_url},
                   server.proc, server.stop)


def start_triton(server_dir: Path, models: Path, env: dict, work: Path, r: int) -> Running:
    port, grpc_port = free_port(), free_port()
    server = Server("triton", triton_command(server_dir, models, port, grpc_port), port,
                    work / f"triton-{r}.log", True, env, ready_path="/v2/health/ready").start()
    return Running("triton", {"http": server.url, "grpc": f"127.0.0.1:{grpc_port}"},
                   server.proc, server.stop)


def measure(server: Running, model: str, inputs, rows: int, protocol: str, concurrency: int,
            seconds: float) -> dict:
    """One closed-loop measurement, with the server tree's CPU per request (the client shares
    the machine: the server's cost per request says which side a difference is on)."""
    streaming = protocol == "grpc-stream"
    protocol = "grpc" if streaming else protocol
    opts = BenchOptions(url=server.urls[protocol], model=model, concurrency=concurrency,
                        duration_s=seconds, warmup_s=1.0, rows_per_request=rows,
                        protocol=protocol, streaming=streaming, timeout_s=30)
    before, c0 = tree_cpu(server.pid), client_cpu()
    r = asyncio.run(run_bench(opts, inputs))
    after, c1 = tree_cpu(server.pid), client_cpu()
    sent = r.requests * (opts.duration_s + opts.warmup_s) / opts.duration_s
    cpu = cpu_per_request(before, after, round(sent))
    front = sum(s for g, s in cpu.items() if FRONT[server.name] in g)
    return {"rows_per_s": r.rows_per_s, "rps": r.throughput_rps, "p50": r.latency_ms.get("p50"),
            "p99": r.latency_ms.get("p99"), "errors": r.errors,
            "cpu_us_per_request": 1e6 * sum(cpu.values()), "front_cpu_us_per_request": 1e6 * front,
            "cpu_us_by_group": {g: 1e6 * s for g, s in cpu.items() if s > 0},
            # the load generator's own (this process): near a core, it is the limit
            "client_cpu_us_per_request": 1e6 * (c1 - c0) / max(sent, 1)}


def answers(grpc_url: str, model: str, requests: list[dict[str, np.ndarray]],
            output: str) -> np.ndarray | None:
    """Output ``output`` of each request's answer over gRPC (tritonclient, as users call
    either server), rows stacked; None if the server answers no such output."""
    import tritonclient.grpc as tg
    from tritonclient.utils import np_to_triton_dtype

    client = tg.InferenceServerClient(grpc_url)
    try:
        out = []
        for arrays in requests:
            ins = []
            for name, a in arrays.items():
                t = tg.InferInput(name, list(a.shape),
                                  "BYTES" if a.dtype == object else np_to_triton_dtype(a.dtype))
                t.set_data_from_numpy(a)
                ins.append(t)
            y = client.infer(model, ins).as_numpy(output)
            if y is None:
                return None
            out.append(y.reshape(len(next(iter(arrays.values()))), -1).astype(np.float64))
        return np.concatenate(out)
    finally:
        client.close()


def check_requests(inputs: list[dict[str, np.ndarray]], rows: int) -> list[dict]:
    if rows == 1:
        return inputs[:4]
    return [{k: np.concatenate([r[k] for r in inputs[:rows]]) for k in inputs[0]}]


def compare(a: np.ndarray | None, b: np.ndarray | None, rows: int) -> str:
    if a is None or b is None:
        return "not compared: an answer lacks the output"
    if rows == 1:
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return f"min cosine {cos.min():.6f}"
    return f"max abs difference {np.abs(a - b).max():.2e}"


def server_round(server: Running, cases: dict, conc: list[int], protocols: list[str], r: int,
                 seconds: float, checked: dict) -> dict:
    """Every case, concurrency and protocol on one started server (protocols alternating)."""
    waited, idle = settle(server)
    print(f"round {r + 1} {server.name}: settled in {waited:.1f} s, idle {idle:.2f} cores",
          flush=True)
    row = {}
    for case, (model, rows, output) in cases.items():
        inputs = case_inputs(fetch_metadata(server.urls["http"], model), rows)
        got = answers(server.urls["grpc"], model, check_requests(inputs, rows), output)
        ref = checked.setdefault(case, (server.name, got))
        if ref[0] != server.name:
            print(f"  {case}: {server.name} vs {ref[0]} {compare(got, ref[1], rows)}",
                  flush=True)
        order = protocols if r % 2 == 0 else protocols[::-1]
        for c in conc:
            for protocol in order:
                m = measure(server, model, inputs, rows, protocol, c, seconds)
                row[(case, f"{server.name}/{protocol}", c)] = m
                print(f"round {r + 1} {case:9} {server.name + '/' + protocol:22} c={c:3} "
                      f"{m['rows_per_s']:9.1f} rows/s p50 {m['p50'] or 0:.1f} ms "
                      f"p99 {m['p99'] or 0:.1f} ms CPU {m['cpu_us_per_request']:.0f} us/request "
                      f"(front {m['front_cpu_us_per_request']:.0f}, client "
                      f"{m['client_cpu_us_per_request']:.0f}) "
                      f"errors {m['errors'] or 'none'}", flush=True)
    return row


def summarize(rounds: list[dict], cases: dict, keys: list[str], conc: list[int]) -> dict:
    summary: dict = {}
    for case in cases:
        for key in keys:
            best, at = [], []
            for row in rounds:
                ok = [row[(case, key, c)] for c in conc if not row[(case, key, c)]["errors"]
                      and (row[(case, key, c)]["p99"] or 1e9) <= P99_BOUND_MS]
                b = max(ok, key=lambda m: m["rows_per_s"], default=None)
                best.append(b["rows_per_s"] if b else 0.0)
                at.append(b)
            points = [row[(case, key, c)] for row in rounds for c in conc]
            summary[f"{case}/{key}"] = {
                "rows_per_s_median": statistics.median(best), "per_round": best,
                "p99_at_best_ms": [b["p99"] if b else None for b in at],
                "cpu_us_per_request_median": statistics.median(
                    m["cpu_us_per_request"] for m in points),
                "front_cpu_us_per_request_median": statistics.median(
                    m["front_cpu_us_per_request"] for m in points)}
        for num, den in RATIOS:
            if num not in keys or den not in keys:
                continue
            ratios = [g / h if h else float("nan") for g, h in zip(
                summary[f"{case}/{num}"]["per_round"], summary[f"{case}/{den}"]["per_round"])]
            # a round where the reference met no point within the bound has no ratio
            finite = [x for x in ratios if math.isfinite(x)]
            summary[f"{case}/{num} over {den}"] = {
                "median": statistics.median(finite) if finite else float("nan"),
                "per_round": ratios}
    return summary


def print_report(summary: dict, cases: dict, keys: list[str], rounds: int,
                 seconds: float) -> None:
    print(f"\n{rounds} interleaved rounds, medians; {seconds:g} s per point; best rows/s with "
          f"p99 <= {P99_BOUND_MS:.0f} ms and no errors; CPU per request of the server's tree "
          "(front: optiserve's gateway replica / tritonserver)")
    for case in cases:
        print(f"\n{case}")
        for key in keys:
            s = summary[f"{case}/{key}"]
            rounds_txt = ", ".join(f"{x:.1f}" for x in s["per_round"])
            print(f"  {key:22} {s['rows_per_s_median']:10.1f} rows/s ({rounds_txt}); CPU "
                  f"{s['cpu_us_per_request_median']:.0f} us/request, front "
                  f"{s['front_cpu_us_per_request_median']:.0f}")
        for num, den in RATIOS:
            name = f"{num} over {den}"
            target = TARGETS.get((num, den))
            s = summary.get(f"{case}/{name}")
            if s is None:
                continue
            verdict = "" if target is None else (
                f"  target >= {target:g}: {'met' if s['median'] >= target else 'NOT met'}")
            print(f"  {name:41} {s['median']:.2f} (rounds "
                  f"{', '.join(f'{x:.2f}' for x in s['per_round'])}){verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--minilm-version", type=int, default=None,
                    help="[the newest onnx-int8-dynamic, else the newest ONNX]")
    ap.add_argument("--tensor-model", default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", default="8,32,64")
    ap.add_argument("--triton-protocols", default="grpc,grpc-stream,http",
                    help="Triton's protocols measured (grpc is the target's reference)")
    ap.add_argument("--cpus", type=float, default=None,
                    help="CPUs reserved for each optiserve model version (ONNX Runtime runs "
                         "them as single-thread lanes) [default: --triton-threads, the "
                         "intra-op threads of each Triton model]")
    ap.add_argument("--triton-threads", type=int, default=available_cpus())
    ap.add_argument("--triton-delay-us", type=int, default=5000)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "optiserve-bench")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    repo = ModelRepository(a.repository)
    try:
        minilm = repo.get("minilm", a.minilm_version or pick_version(repo))
        tensor = repo.get(a.tensor_model, repo.latest(a.tensor_model))
    except ModelNotFoundError as e:
        sys.exit(f"{e}: see `python -m benchmarks.grpc_vs_rest --help` for the optimize "
                 "command that adds the tensor model")
    for ref in (minilm, tensor):
        if ref.manifest.runtime != "onnxruntime":
            sys.exit(f"{ref.manifest.name}:{ref.manifest.version} is {ref.manifest.variant}: "
                     "Triton's side runs model.onnx, give an ONNX version")
    refs = [("minilm", minilm.manifest.version), (a.tensor_model, tensor.manifest.version)]
    cpus = a.cpus or float(a.triton_threads)
    doc = build_serve_config(str(a.repository.resolve()), refs, version_cpus=cpus)
    for v in gateway_user_config(doc)["models"][a.tensor_model]["versions"].values():
        v["max_batch_size"] = TENSOR_BATCH
    conc = [int(c) for c in a.concurrency.split(",")]
    triton_protocols = [p for p in a.triton_protocols.split(",") if p]
    if "grpc" not in triton_protocols:
        sys.exit("--triton-protocols must include grpc (answers are checked over gRPC)")
    keys = ["optiserve/http", "optiserve/grpc", "optiserve/grpc-stream",
            *(f"triton/{p}" for p in triton_protocols)]
    # (model, rows per request, the output compared between servers: the ONNX graph's first)
    cases = {"sentence": ("minilm", 1, minilm.manifest.model_signature.outputs[0].name),
             "tensor64": (a.tensor_model, TENSOR_ROWS,
                          tensor.manifest.model_signature.outputs[0].name)}
    server_dir, triton_env = triton_install(a.cache)
    print(f"minilm:{minilm.manifest.version} ({minilm.manifest.variant}, max_batch_size "
          f"{minilm.manifest.batching.max_batch_size}), {a.tensor_model}:"
          f"{tensor.manifest.version} ({tensor.manifest.variant}, max_batch_size "
          f"{TENSOR_BATCH}); optiserve {cpus:g} CPUs per version, Triton "
          f"{a.triton_threads} intra-op threads per model, delay "
          f"{a.triton_delay_us} us", flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grpc-vs-rest-") as tmp:
        work = Path(tmp)
        models = triton_repository(work, minilm.path.resolve(), minilm.manifest,
                                   a.triton_threads, a.triton_delay_us)
        triton_tensor_model(models, a.tensor_model, tensor.path.resolve(), tensor.manifest,
                            a.triton_threads, a.triton_delay_us, TENSOR_BATCH)
        starts = {"optiserve": (lambda r: start_optiserve(doc, work),
                                ["http", "grpc", "grpc-stream"]),
                  "triton": (lambda r: start_triton(server_dir, models, triton_env, work, r),
                             triton_protocols)}
        rounds, checked = [], {}
        for r in range(a.rounds):
            row = {}
            order = ["optiserve", "triton"] if r % 2 == 0 else ["triton", "optiserve"]
            for name in order:
                start, protocols = starts[name]
                server = start(r)
                try:
                    row.update(server_round(server, cases, conc, protocols, r, a.seconds,
                                            checked))
                finally:
                    server.stop()
            rounds.append(row)
            print(f"round {r + 1} done at {time.monotonic() - t0:.0f} s", flush=True)
    summary = summarize(rounds, cases, keys, conc)
    print_report(summary, cases, keys, a.rounds, a.seconds)
    print(f"run took {time.monotonic() - t0:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "rounds": [
            {"|".join(map(str, k)): v for k, v in row.items()} for row in rounds]}, indent=2))


if __name__ == "__main__":
    main()
