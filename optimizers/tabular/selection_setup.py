"""Feature selection within ``optimize``: options checked and data split before any build, the
sweep run and measured as variants after the others, the chosen point picked."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptimizeError
from ..validation import ValidationSet, tabular_set
from .data import TrainingData, load_training
from .feature_selection import SELECTORS, SelectionResult, parse_ks, sweep
from .select_variant import builder, judge, variant_name


@dataclass
class SelectionSetup:
    ks: list[int]
    selector: str
    data: TrainingData


def prepare(src, opts) -> tuple[SelectionSetup, ValidationSet]:
    """Check the options and read the training data; the validation set is its held-out split
    (with labels), so every variant, reduced or not, is measured on rows no refit saw."""
    if src.tabular is None:
        raise OptimizeError("--select-features applies to scikit-learn models (sklearn:FILE or "
                            "the built-in breast-cancer)")
    if opts.selector not in SELECTORS:
        raise OptimizeError(f"--selector must be one of {', '.join(SELECTORS)} "
                            f"(got {opts.selector!r})")
    ks = parse_ks(opts.select_features, src.tabular.n_features)
    data = load_training(src, opts.train_data, opts.labels)
    vset = tabular_set(src, data.x[data.held_out], data.y[data.held_out],
                       f"validation: the {len(data.held_out)} held-out rows of {data.origin} "
                       f"(feature selection fits on the other {len(data.train)})")
    return SelectionSetup(ks, opts.selector, data), vset


def run(setup: SelectionSetup, ctx, progress, measure) -> tuple[SelectionResult, list]:
    """Fit every k, then build and measure each as the variant ``select-k<k>``."""
    progress.phase("feature selection", total=len(setup.ks))
    result = sweep(ctx.source, setup.data, setup.ks, setup.selector, ctx.budget,
                   progress.status)
    outcomes = []
    for point in result.points:
        name = variant_name(point.k)
        progress.status(f"{name}: building")
        o = measure(name, builder(point, result), judge(point, ctx))
        point.variant = name
        if o.status == "ok":
            point.throughput = {p.batch_size: p.throughput for p in o.measurements.latency}
            point.p50_ms = {p.batch_size: p.p50_ms for p in o.measurements.latency}
            # what is served decides, not the refit pipeline: the graph's own F1
            point.within_budget = point.within_budget and o.passed
        else:
            point.within_budget = False
        outcomes.append(o)
        progress.advance()
    return result, outcomes


def choose(result: SelectionResult, passing: dict) -> str | None:
    """The fewest features within the budget (None: no k is, the full model's variants
    compete as usual)."""
    point = result.chosen
    return point.variant if point is not None and point.variant in passing else None
