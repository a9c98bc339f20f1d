"""``optiserve repo``: list, show and verify the model repository."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from serving.repository import ModelRepository, RepositoryError, parse_ref
from .common import RepositoryOption, console, err_console, fail, model_name, model_ref

app = typer.Typer(help="Inspect the model repository.", no_args_is_help=True)


@app.command("list")
def list_command(repository: Optional[str] = RepositoryOption) -> None:
    """List models and their versions."""
    repo = ModelRepository(repository)
    table = Table(title=f"model repository {repo.root}")
    for col in ("model", "version", "variant", "task", "runtime", "fidelity", "rows/s", "created"):
        table.add_column(col)
    for model in repo.models():
        for v in repo.versions(model):
            try:
                m = repo.manifest(model, v)
            except RepositoryError as e:
                table.add_row(model, str(v), f"[red]{e}[/]", "", "", "", "", "")
                continue
            f = m.measurements.fidelity
            fid = f.headline()
            best = max((p.throughput for p in m.measurements.latency), default=0.0)
            table.add_row(model, str(v), m.variant, m.task, m.runtime, fid, f"{best:.1f}",
                          m.created_at.strftime("%Y-%m-%d %H:%M"))
    if not table.row_count:
        console.print(f"no models in {repo.root}")
        return
    console.print(table)


@app.command("show")
def show_command(ref: str = typer.Argument(..., help="MODEL or MODEL:VERSION",
                                          callback=model_ref),
                 repository: Optional[str] = RepositoryOption,
                 as_json: bool = typer.Option(False, "--json", help="Print the raw manifest.")
                 ) -> None:
    """Show one version's manifest (the newest when no version is given)."""
    repo = ModelRepository(repository)
    try:
        model, version = parse_ref(ref)
        m = repo.manifest(model, version)
    except (ValueError, RepositoryError) as e:
        fail(str(e))
    if as_json:
        console.print_json(m.model_dump_json())
        return
    console.print(f"[bold]{m.name}:{m.version}[/]  variant {m.variant}  runtime {m.runtime} "
                  f"({', '.join(m.execution_providers) or m.device})  task {m.task}")
    console.print(f"built {m.created_at:%Y-%m-%d %H:%M:%S %Z} from {m.source.kind} {m.source.ref}")
    for title, sig in (("inputs", m.signature.inputs), ("outputs", m.signature.outputs)):
        console.print(f"{title}: " + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in sig))
    f = m.measurements.fidelity
    console.print("fidelity: " + json.dumps(
        {k: v for k, v in f.model_dump().items() if v is not None}))
    table = Table(title="latency")
    for col in ("batch", "seq", "p50 ms", "p95 ms", "p99 ms", "rows/s"):
        table.add_column(col)
    for p in m.measurements.latency:
        table.add_row(str(p.batch_size), str(p.seq_len or ""), f"{p.p50_ms:.2f}",
                      f"{p.p95_ms:.2f}", f"{p.p99_ms:.2f}", f"{p.throughput:.1f}")
    console.print(table)
    b = m.batching
    console.print(f"batching default: max batch {b.max_batch_size}, max delay {b.max_delay_ms} ms"
                  + (f" ({b.reason})" if b.reason else ""))
    console.print(f"size {m.measurements.size_bytes / 1e6:.1f} MB, peak RSS "
                  f"{m.measurements.peak_rss_mb} MB, load {m.measurements.load_time_s} s")
    for a in m.artifacts:
        console.print(f"  {a.path}  {a.size_bytes} bytes  sha256 {a.sha256}")
    for n in m.notes:
        console.print(f"note: {n}")


@app.command("verify")
def verify_command(model: Optional[str] = typer.Argument(None, help="Only this model.",
                                                        callback=model_name),
                   repository: Optional[str] = RepositoryOption) -> None:
    """Check every artifact's sha256 against its manifest; exit 1 on any mismatch."""
    repo = ModelRepository(repository)
    models = [model] if model else repo.models()
    if model and not repo.versions(model):
        fail(f"model {model!r} has no published version in {repo.root}")
    bad = 0
    checked = 0
    for name in models:
        for v in repo.versions(name):
            problems = repo.verify(name, v)
            checked += 1
            if problems:
                bad += 1
                err_console.print(f"[red]FAIL[/] {name}:{v}")
                for p in problems:
                    err_console.print(f"  - {p}", highlight=False)
            else:
                console.print(f"[green]ok[/]   {name}:{v}")
    if bad:
        fail(f"{bad} of {checked} version(s) failed verification")
    console.print(f"{checked} version(s) verified")
