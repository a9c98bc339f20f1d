"""The tune report: ``tune.md`` (every trial, the best configuration, parameter importance for
bayes) and ``tune.png`` (throughput against p99 for every measured step, the SLO line, the
chosen point)."""

from __future__ import annotations

from pathlib import Path

from .scoring import Trial, best_trial, closest_trial
from .space import PARAMS


def _fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def plot(trials: list[Trial], slo_ms: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    pts = [(s.throughput, s.p99_ms, t) for t in trials for s in t.steps if s.p99_ms is not None]
    ok = [(x, y) for x, y, t in pts if y <= slo_ms]
    bad = [(x, y) for x, y, t in pts if y > slo_ms]
    if ok:
        ax.scatter(*zip(*ok), s=18, color="tab:blue", label="steps within the SLO")
    if bad:
        ax.scatter(*zip(*bad), s=18, color="tab:gray", marker="x", label="steps over the SLO")
    ax.axhline(slo_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    best = best_trial(trials)
    if best is not None:
        b = best.best
        ax.scatter([b.throughput], [b.p99_ms], s=160, facecolors="none", edgecolors="tab:green",
                   linewidths=2, label=f"chosen: trial {best.number}")
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("optiserve tune: every trial's load steps")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(directory: str | Path, *, model: str, version: int, strategy: str,
                 slo_ms: float, load: str, trials: list[Trial],
                 importances: dict[str, float] | None = None,
                 config_fragment: str | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    png = plot(trials, slo_ms, d / "tune.png")
    best = best_trial(trials)
    lines = [f"# optiserve tune: {model}:{version}", "",
             f"Strategy **{strategy}**, {len(trials)} trials, load **{load}**, SLO p99 <= "
             f"{slo_ms:g} ms with no errors. A trial's value is its highest sustained "
             "throughput.", ""]
    if best is not None:
        b = best.best
        lines += [f"**Best: trial {best.number}**, {best.value:.1f} req/s at p99 "
                  f"{b.p99_ms:.1f} ms (p50 {_fmt(b.p50_ms)}, p95 {_fmt(b.p95_ms)}), "
                  + ", ".join(f"{k}={best.config[k]:g}" for k in PARAMS), ""]
    else:
        close = closest_trial(trials, slo_ms)
        lines += ["**No configuration met the SLO.**"]
        if close:
            t, s = close
            lines += [f"Closest: trial {t.number} at p99 {s.p99_ms:.1f} ms "
                      f"({s.throughput:.1f} req/s, {s.errors} errors), "
                      + ", ".join(f"{k}={t.config[k]:g}" for k in PARAMS)]
        lines += [""]
    lines += [f"![throughput vs p99]({png.name})", "", "## Trials", "",
              "| # | " + " | ".join(PARAMS) + " | applied | state | req/s | p50 ms | p95 ms | "
              "p99 ms | errors | CPU % | steps |",
              "|" + "---|" * (len(PARAMS) + 10)]
    for t in trials:
        s = t.best or (t.steps[-1] if t.steps else None)
        lines.append(
            f"| {t.number} | " + " | ".join(f"{t.config[k]:g}" for k in PARAMS)
            + f" | {t.applied or '-'} | {t.state} | {_fmt(t.value)} | "
            + " | ".join(_fmt(getattr(s, k, None)) for k in ("p50_ms", "p95_ms", "p99_ms"))
            + f" | {s.errors if s else '-'} | {_fmt(getattr(s, 'cpu_percent', None), '.0f')} | "
            f"{len(t.steps)} |")
    if importances:
        lines += ["", "## Parameter importance (fANOVA over the completed trials)", "",
                  "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importances.items()]
    if config_fragment:
        lines += ["", "## Serve config fragment", "", "```yaml", config_fragment.rstrip(), "```"]
    md = d / "tune.md"
    md.write_text("\n".join(lines) + "\n")
    return md
