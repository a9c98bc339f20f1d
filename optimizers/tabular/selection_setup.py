"""Feature selection within ``optimize``: options checked and data split before any build, the
sweep run and measured as variants after the others, the chosen point picked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptimizeError
from ..validation import Split, ValidationSet, tabular_set
from .data import TrainingData, load_training
from .feature_selection import SELECTORS, SelectionResult, parse_ks, sweep
from .select_variant import builder, judge, variant_name


@dataclass
class SelectionSetup:
    ks: list[int]
    selector: str
    data: TrainingData


def prepare(src, opts) -> tuple[SelectionSetup, ValidationSet, Split]:
    """Check the options and read the training data. Every variant, reduced or not, is judged
    on the held-out quarter (with labels), rows no refit saw; what builders tune and calibrate
    on are training rows (as many as held out), so the judged rows stay whole: halving them
    would judge feature selection's F1 on other rows than its sweep."""
    if src.tabular is None:
        raise OptimizeError("--select-features applies to scikit-learn models (sklearn:FILE or "
                            "the built-in breast-cancer)")
    if opts.selector not in SELECTORS:
        raise OptimizeError(f"--selector must be one of {', '.join(SELECTORS)} "
                            f"(got {opts.selector!r})")
    ks = parse_ks(opts.select_features, src.tabular.n_features)
    data = load_training(src, opts.train_data, opts.labels)
    tune = data.train[: len(data.held_out)]
    rows = np.concatenate([tune, data.held_out])
    vset = tabular_set(src, data.x[rows], data.y[rows],
                       f"validation: the {len(data.held_out)} held-out rows of {data.origin} "
                       f"(feature selection fits on the other {len(data.train)})")
    n = len(tune)
    tuning_rows, held_rows = np.arange(n), np.arange(n, len(rows))
    split = Split(tuning=vset.subset(tuning_rows), held_out=vset.subset(held_rows),
                  tuning_rows=tuning_rows, held_out_rows=held_rows, seed=0,
                  described=f"{len(held_rows)} held-out rows judge fidelity; {n} of the "
                            f"training rows tune and calibrate")
    return SelectionSetup(ks, opts.selector, data), vset, split


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
