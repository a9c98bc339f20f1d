"""``optiserve bench``: load-test an OIP endpoint, closed or open loop."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .common import console, err_console, fail


def bench_command(
    url: str = typer.Argument(..., help="Server URL, e.g. http://127.0.0.1:8000 (with "
                                        "--protocol grpc: host:port, e.g. 127.0.0.1:8001; "
                                        "with openai: the URL before /v1)"),
    model: str = typer.Option(..., "--model", help="Model name."),
    version: Optional[str] = typer.Option(None, "--version", help="Pin a version."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", help="Closed loop: clients sending back to back [default: 8]."),
    rate: Optional[float] = typer.Option(
        None, "--rate", help="Open loop: requests per second (Poisson arrivals)."),
    duration: float = typer.Option(10.0, "--duration", help="Seconds measured."),
    warmup: float = typer.Option(1.0, "--warmup", help="Seconds sent before measuring."),
    requests: Optional[int] = typer.Option(None, "--requests", help="Stop after this many."),
    input_file: Optional[str] = typer.Option(
        None, "--input-file", help="A directory of images (JPEG, PNG, WebP: image models, one "
                                   "per row), text lines (text models), .npz rows, or tabular "
                                   "rows in .csv/.npy [default: built-in sentences / random "
                                   "tensors]."),
    rows: int = typer.Option(1, "--rows", help="Rows per request."),
    json_body: bool = typer.Option(False, "--json-body", help="Send JSON tensors, not binary."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
    timeout: float = typer.Option(30.0, "--timeout", help="Per-request timeout (s)."),
    protocol: str = typer.Option("http", "--protocol",
                                 help="http (OIP REST), grpc (OIP gRPC, raw tensors) or "
                                      "openai (POST /v1/embeddings, text; --rows strings "
                                      "per request)."),
    streaming: bool = typer.Option(
        False, "--streaming", help="With --protocol grpc: send over ModelStreamInfer, one "
                                   "bidirectional stream per request in flight (as "
                                   "perf_analyzer --streaming), not one ModelInfer call each."),
) -> None:
    """Send inference load and report latency percentiles, throughput and errors by code."""
    from ..bench import BenchOptions, check_rows, fetch_metadata, load_inputs, run_bench

    if concurrency is not None and rate is not None:
        fail("choose --concurrency (closed loop) or --rate (open loop), not both")
    if (concurrency is not None and concurrency < 1) or (rate is not None and rate <= 0):
        fail("--concurrency must be >= 1 and --rate > 0")
    if duration <= 0 or rows < 1:
        fail("--duration must be > 0 and --rows >= 1")
    if protocol not in ("http", "grpc", "openai"):
        fail(f"--protocol must be http, grpc or openai, got {protocol!r}")
    if streaming and protocol != "grpc":
        fail("--streaming is gRPC's ModelStreamInfer: use it with --protocol grpc")
    try:
        meta = fetch_metadata(url, model, version, protocol)
        check_rows(meta, rows)
        inputs = load_inputs(input_file, meta, json_body)
    except (RuntimeError, ValueError, OSError) as e:
        fail(str(e))
    opts = BenchOptions(url=url, model=model, version=version,
                        concurrency=concurrency if rate is None else None,
                        rate=rate, duration_s=duration, warmup_s=warmup, max_requests=requests,
                        rows_per_request=rows, binary=not json_body, timeout_s=timeout,
                        protocol=protocol, streaming=streaming)
    if opts.rate is None and opts.concurrency is None:
        opts.concurrency = 8
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=err_console, disable=as_json, transient=True) as progress:
        task = progress.add_task("warming up", total=duration)

        def update(done_s, ok, err):
            progress.update(task, completed=min(done_s, duration),
                            description=f"{ok} ok, {err} errors")

        result = asyncio.run(run_bench(opts, inputs, update))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"{model} @ {url} ({result.mode} loop"
                  + (f", {opts.rate:g} req/s offered" if opts.rate else
                     f", concurrency {opts.concurrency}")
                  + (", ModelStreamInfer" if streaming else "") + ")")
    for col in ("requests", "ok", "req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                "errors"):
        table.add_column(col)
    lat = result.latency_ms
    table.add_row(str(result.requests), str(result.ok), f"{result.throughput_rps:.1f}",
                  f"{result.rows_per_s:.1f}",
                  *(f"{lat[k]:.1f}" if k in lat else "-" for k in ("p50", "p95", "p99", "max")),
                  ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none")
    console.print(table)
