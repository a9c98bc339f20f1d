"""Feature selection as an optimization: keep the k most informative features, retrain, convert.

For each k, ``SelectKBest`` (ANOVA F-test ``f_classif``, or mutual information) and a clone of
the source estimator are fitted as one Pipeline on the training split; the Pipeline is
converted whole, so the selection (a Gather on the feature axis) runs inside the served graph
and clients keep sending the full feature vector. Each k is a variant ``select-k<k>``: measured
like any other, judged on F1 against the reference on the held-out rows. The chosen point is
the fewest features within ``--max-f1-drop``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptimizeError
from ..fidelity import FidelityBudget, compare
from .convert import sklearn_outputs
from .data import TrainingData

SELECTORS = ("f_classif", "mutual_info")


def parse_ks(text: str, n_features: int) -> list[int]:
    """``5,10,20`` -> [5, 10, 20]; each k must be in 1..n_features-1."""
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise OptimizeError(f"--select-features must be comma-separated integers, e.g. 5,10,20 "
                            f"(got {text!r})") from None
    bad = [k for k in ks if not 1 <= k < n_features]
    if not ks or bad:
        raise OptimizeError(f"--select-features: k must be between 1 and {n_features - 1} (the "
                            f"model takes {n_features} features); got {text!r}")
    return ks


def score_function(selector: str):
    from sklearn.feature_selection import f_classif, mutual_info_classif

    if selector == "f_classif":
        return f_classif
    if selector == "mutual_info":
        return functools.partial(mutual_info_classif, random_state=0)
    raise OptimizeError(f"--selector must be one of {', '.join(SELECTORS)} (got {selector!r})")


def reduced_pipeline(estimator, k: int, selector: str):
    """SelectKBest(k) in front of an unfitted clone of ``estimator``."""
    from sklearn.base import clone
    from sklearn.feature_selection import SelectKBest
    from sklearn.pipeline import Pipeline

    return Pipeline([("select", SelectKBest(score_function(selector), k=k)),
                     ("model", clone(estimator))])


@dataclass
class KPoint:
    """One k of the sweep: the fitted pipeline, the features it kept, its F1 / ROC AUC."""

    k: int
    pipeline: object
    kept: list[int]
    f1: float
    roc_auc: float | None
    within_budget: bool
    #: Set once the variant is measured: rows/s by batch size, p50 ms at batch 1.
    variant: str = ""
    throughput: dict[int, float] = field(default_factory=dict)
    p50_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class SelectionResult:
    selector: str
    data: str
    train_rows: int
    held_out_rows: int
    reference_f1: float
    reference_roc_auc: float | None
    refit_f1: float
    refit_roc_auc: float | None
    max_f1_drop: float
    points: list[KPoint]

    @property
    def chosen(self) -> KPoint | None:
        """The fewest features within the budget."""
        return next((p for p in self.points if p.within_budget), None)


def _metrics(pipeline, x, y, budget: FidelityBudget) -> tuple[float, float | None]:
    out = sklearn_outputs(pipeline, x, ["probabilities"])
    f = compare("classification", out, out, budget, y)
    return f.f1, f.roc_auc


def sweep(source, data: TrainingData, ks: list[int], selector: str, budget: FidelityBudget,
          status=lambda _msg: None) -> SelectionResult:
    """Fit every k on the training split and measure it on the held-out rows (float32 rows,
    as the served graph sees them)."""
    from sklearn.base import clone

    est = source.tabular.estimator
    xt, yt = data.x[data.train], data.y[data.train]
    xh = data.x[data.held_out].astype(np.float32)
    yh = data.y[data.held_out]
    classes = np.asarray(source.tabular.classes)
    fit_labels = classes[yt]  # the estimator's own class values
    ref_f1, ref_auc = _metrics(est, xh, yh, budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notices of refits
        status("feature selection: refitting with every feature")
        refit = clone(est).fit(xt, fit_labels)
        refit_f1, refit_auc = _metrics(refit, xh, yh, budget)
        points = []
        for k in ks:
            status(f"feature selection: fitting k={k}")
            p = reduced_pipeline(est, k, selector).fit(xt, fit_labels)
            f1, auc = _metrics(p, xh, yh, budget)
            kept = [int(i) for i in np.flatnonzero(p.named_steps["select"].get_support())]
            points.append(KPoint(k, p, kept, f1, auc,
                                 within_budget=f1 >= ref_f1 - budget.max_f1_drop))
    return SelectionResult(selector, data.origin, len(data.train), len(data.held_out), ref_f1,
                           ref_auc, refit_f1, refit_auc, budget.max_f1_drop, points)
