"""The optimization report: Markdown with tables and two PNG charts."""

from __future__ import annotations

from pathlib import Path

from serving.repository import VersionRef

from .selection import best_throughput, fidelity_score
from .tradeoff import best_per_budget, front, points, verdict


def _fid_cell(f) -> str:
    if f.cosine_min is not None:
        text = f"cos mean {f.cosine_mean:.4f} / min {f.cosine_min:.4f}"
        if f.neighbour_agreement is not None:
            text += f", top-5 nbr {f.neighbour_agreement:.3f}"
        return text
    if f.token_agreement is not None:
        return (f"tokens {f.token_agreement:.4f}, entity F1 {f.entity_f1:.4f}, max Δp "
                f"{f.max_prob_diff:.4f}")
    text = f"top-1 {f.top1_agreement:.4f}, max Δp {f.max_prob_diff:.4f}"
    if f.top5_overlap is not None:
        text += f", top-5 overlap {f.top5_overlap:.4f}"
    if f.accuracy is not None:
        text += f", accuracy {f.accuracy:.4f} (ref {f.reference_accuracy:.4f})"
    if f.f1 is not None:
        text += f", F1 {f.f1:.4f} (ref {f.reference_f1:.4f})"
        if f.roc_auc is not None:
            text += f", AUC {f.roc_auc:.4f}"
    return text


def _charts(result, out: Path, opts) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [o for o in result.outcomes if o.status == "ok"]
    if not ok:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in ok:
        x, y = fidelity_score(o.measurements.fidelity), best_throughput(o.measurements.latency)
        ax.scatter(x, y, s=60, marker="o" if o.passed else "x",
                   color="tab:green" if o.name == result.chosen else
                   ("tab:blue" if o.passed else "tab:red"))
        ax.annotate(o.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    bound = _bound(result, opts)
    two_d = [p for p in points(ok) if p.name in result.pareto]
    two_d.sort(key=lambda p: p.fidelity)
    if len(two_d) > 1:
        ax.plot([p.fidelity for p in two_d], [p.throughput for p in two_d], color="tab:green",
                alpha=0.4, linestyle="-", label="Pareto front (speed, fidelity)")
    ax.axvline(bound, color="grey", linestyle="--", label=f"budget ({bound})")
    ax.set_xlabel(f"held-out fidelity ({_metric(result)})")
    ax.set_ylabel("best throughput (rows/s)")
    ax.set_title(f"{result.source.name}: throughput vs fidelity")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_fidelity.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in ok:
        pts = sorted(o.measurements.latency, key=lambda p: p.batch_size)
        ax.plot([p.batch_size for p in pts], [p.p99_ms for p in pts], marker="o", label=o.name)
    ax.axhline(opts.p99_target_ms, color="grey", linestyle="--",
               label=f"p99 target {opts.p99_target_ms:.0f} ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({p.batch_size for o in ok for p in o.measurements.latency}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("p99 latency per call (ms)")
    ax.set_title(f"{result.source.name}: latency vs batch size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_batch.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = {p.name for p in front(points(ok))}
    for p in points(ok):
        ax.scatter(p.size_bytes / 1e6, p.throughput, s=max(20.0, p.peak_rss_mb / 4),
                   marker="o" if p.passed else "x",
                   color="tab:green" if p.name == result.chosen else
                   ("tab:blue" if p.name in full else "tab:grey"))
        ax.annotate(p.name, (p.size_bytes / 1e6, p.throughput), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (MB, log); marker area ~ peak RSS")
    ax.set_ylabel("best throughput (rows/s)")
    ax.set_title(f"{result.source.name}: speed vs size (blue: on the Pareto front, x: over "
                 "budget)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_size.png", dpi=110)
    plt.close(fig)
    return ["throughput_vs_fidelity.png", "latency_vs_batch.png", "throughput_vs_size.png"]


def _mb(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.3g}"


def _bound(result, opts) -> float:
    return (opts.budget.min_top1 if result.source.task in ("classification",
                                                           "token-classification")
            else opts.budget.min_cosine)


def _metric(result) -> str:
    return {"classification": "top-1 agreement",
            "token-classification": "token-label agreement"}.get(result.source.task,
                                                                  "cosine min")


def _reference_name(result) -> str:
    return "sklearn" if result.source.tabular is not None else "torch-fp32"


def bought_and_cost(result, opts) -> str | None:
    """What choosing the lighter variant over the heavier reference bought (speed-up at the
    largest batch measured, size) and cost (agreement with it on held-out rows), in one
    sentence; None when either was not measured."""
    if not result.chosen:
        return None
    ref_name = _reference_name(result)
    c = result.outcome(result.chosen)
    ref = next((o for o in result.outcomes if o.name == ref_name and o.status == "ok"), None)
    if ref is None:
        return None
    if c.name == ref_name:
        return (f"The reference `{ref_name}` itself was chosen: no lighter variant was faster "
                f"within the budget ({opts.budget.describe(result.source.task)}).")
    size = max(opts.batch_sizes)
    at = lambda o: next((p.throughput for p in o.measurements.latency  # noqa: E731
                         if p.batch_size == size), None)
    fast, slow = at(c), at(ref)
    rows = "images" if result.source.is_image else "rows"
    f = c.measurements.fidelity
    speed = (f"{fast / slow:.1f}x the throughput at batch {size} ({fast:.0f} vs {slow:.0f} "
             f"{rows}/s)" if fast and slow else f"{c.throughput:.0f} {rows}/s")
    a, b = c.measurements.size_bytes, ref.measurements.size_bytes
    if max(a, b) < 1.1 * min(a, b):
        smaller = f"a model of about the same size ({_mb(a)} vs {_mb(b)} MB)"
    elif a < b:
        smaller = f"a {b / a:.1f}x smaller model ({_mb(a)} vs {_mb(b)} MB)"
    else:
        smaller = f"a model {a / b:.1f}x the size ({_mb(a)} vs {_mb(b)} MB)"
    cost = f"{_metric(result)} {fidelity_score(f):.4f} with it on {f.samples} held-out {rows}"
    if f.top5_overlap is not None:
        cost += f" (top-5 overlap {f.top5_overlap:.4f})"
    if f.accuracy is not None:
        cost += f" and accuracy {f.accuracy:.4f} against {f.reference_accuracy:.4f}"
    return (f"Choosing `{c.name}` over `{ref_name}` bought {speed} and {smaller}, at the cost of "
            f"{cost}.")


def tradeoff_section(result, opts) -> list[str]:
    """Which method won and why, the fastest variant per budget, the Pareto front."""
    pts = points(result.outcomes)
    if not pts:
        return []
    ref_name = _reference_name(result)
    ref = next((p for p in pts if p.name == ref_name), None)
    metric = _metric(result)
    rule = ("feature selection keeps the fewest features within budget"
            if result.selection is not None else None)
    lines = ["## Trade-off", "", verdict(pts, result.chosen, ref_name, _bound(result, opts),
                                         metric, rule), ""]

    def speedup(p):
        return f"{p.throughput / ref.throughput:.2f}x" if ref and ref.throughput else ""

    lines += [f"Fastest variant for each budget ({metric} on the held-out rows):", "",
              f"| budget | variant | method | rows/s | ×{ref_name} | {metric} | size MB |",
              "|---|---|---|---|---|---|---|"]
    for b, p in best_per_budget(pts):
        if p is None:
            lines.append(f"| ≥ {b} | none reaches it | | | | | |")
            continue
        mark = " (chosen)" if p.name == result.chosen else ""
        lines.append(f"| ≥ {b} | `{p.name}`{mark} | {p.method} | {p.throughput:.1f} | "
                     f"{speedup(p)} | {p.fidelity:.4f} | {_mb(p.size_bytes)} |")
    lines += ["", "Pareto front over every method (no other variant is at least as fast, as "
              "faithful, as small and as lean, and better on one):", "",
              f"| variant | method | rows/s | {metric} | size MB | peak RSS MB |",
              "|---|---|---|---|---|---|"]
    for p in front(pts):
        mark = " (chosen)" if p.name == result.chosen else ""
        lines.append(f"| `{p.name}`{mark} | {p.method} | {p.throughput:.1f} | "
                     f"{p.fidelity:.4f} | {_mb(p.size_bytes)} | {p.peak_rss_mb:.0f} |")
    lines += ["", f"Pareto front of speed vs fidelity only: {', '.join(result.pareto) or 'none'}",
              ""]
    return lines


def write_report(result, out: Path, opts) -> Path:
    """Write ``report.md`` (and charts) into ``out``; return the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(result, out, opts)
    src = result.source
    sizes = sorted(set(opts.batch_sizes))
    lines = [f"# optiserve optimization report: {src.name}", ""]
    lines += [f"- source: {src.source.kind} `{src.source.ref}`", f"- task: {src.task}"]
    lines += [f"- {n}" for n in result.validation_notes]
    ok0 = next((o for o in result.outcomes if o.status == "ok"), None)
    if ok0:
        lines.append(f"- measured on `{ok0.measurements.host}` with "
                     f"{ok0.measurements.intra_op_threads} intra-op thread(s), as serving runs it")
    with_labels = any(o.status == "ok" and o.measurements.fidelity.f1 is not None
                      for o in result.outcomes)
    lines.append(f"- fidelity budget: {opts.budget.describe(src.task, with_labels)}")
    lines.append("")
    if result.chosen:
        c = result.outcome(result.chosen)
        ref_name = _reference_name(result)
        ref = next((o for o in result.outcomes if o.name == ref_name and o.status == "ok"),
                   None)
        speedup = (f", {c.throughput / ref.throughput:.2f}x {ref_name}" if ref and ref.throughput
                   else "")
        lines += [f"**Chosen: `{c.name}`** — {c.throughput:.1f} rows/s at its best batch size"
                  f"{speedup}; {_fid_cell(c.measurements.fidelity)}.", ""]
        sentence = bought_and_cost(result, opts)
        if sentence:
            lines += [sentence, ""]
        b = c.batching
        lines += ["## Recommended batching", "",
                  f"- max batch size **{b.max_batch_size}**, max delay **{b.max_delay_ms} ms** "
                  f"for a p99 target of {b.p99_target_ms:.0f} ms",
                  f"- why: {b.reason}", "- written into the manifest as serving's default", ""]
    else:
        lines += ["**No variant is within the fidelity budget; nothing was chosen.**", ""]
    lines += tradeoff_section(result, opts)
    if result.selection is not None:
        from .tabular.report import selection_section

        lines += selection_section(result.selection, sizes, result.chosen)
    lines += ["## Variants", ""]
    head = ["variant", "status", "fidelity (held-out)", "tuning rows"] + [
        f"b{s} rows/s (p99 ms)" for s in sizes] + ["size MB", "peak RSS MB", "load s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in result.outcomes:
        if o.status != "ok":
            lines.append(f"| {o.name} | {o.status} | {o.reason} |" + " |" * (len(head) - 3))
            continue
        m = o.measurements
        by = {p.batch_size: p for p in m.latency}
        cells = [f"{by[s].throughput:.1f} ({by[s].p99_ms:.1f})" if s in by else "" for s in sizes]
        status = "chosen" if o.name == result.chosen else ("ok" if o.passed else "over budget")
        seen = _fid_cell(m.tuning_fidelity) if m.tuning_fidelity else ""
        lines.append("| " + " | ".join([o.name, status, _fid_cell(m.fidelity), seen, *cells,
                                        _mb(m.size_bytes), f"{m.peak_rss_mb:.0f}",
                                        f"{m.load_time_s:.2f}"]) + " |")
    lines += ["", "Fidelity is judged on the held-out rows, which no build step saw; the tuning "
              "rows (calibration, fp32 node choice, accuracy control) are shown for comparison "
              "and flatter the variants tuned on them.", ""]
    notes = [(o.name, n) for o in result.outcomes if o.build for n in o.build.notes]
    if notes:
        lines += ["## Build notes", ""] + [f"- `{v}`: {n}" for v, n in notes] + [""]
    if result.timings:
        total = sum(s for _, s in result.timings)
        lines += ["## Time", "", f"{total:.0f} s until this report, by step (each variant: "
                  "building, searching, measuring):", "", "| step | seconds | share |",
                  "|---|---|---|"]
        lines += [f"| {name} | {s:.1f} | {s / total:.0%} |" for name, s in result.timings
                  if total] + [""]
    for chart in charts:
        lines += [f"![{chart}]({chart})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def append_published(report: Path, published: list[VersionRef]) -> None:
    lines = ["## Published", ""] + [
        f"- `{r.name}:{r.version}` ({r.manifest.variant}) at `{r.path}`" for r in published]
    with open(report, "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
