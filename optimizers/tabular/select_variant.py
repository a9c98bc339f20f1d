"""The ``select-k<k>`` variants: a fitted reduced Pipeline converted and graph-optimised, and
how it is judged (F1 within the budget, and faithful to its own scikit-learn pipeline)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from serving.repository import Fidelity

from ..fidelity import compare
from ..validation import ValidationSet
from ..variants.base import BuildContext, VariantBuild
from ..variants.onnx_variants import ort_optimize
from .convert import sklearn_outputs, to_onnx
from .feature_selection import KPoint, SelectionResult


def variant_name(k: int) -> str:
    return f"select-k{k}"


def builder(point: KPoint, sel: SelectionResult) -> Callable[[BuildContext], VariantBuild]:
    def build(ctx: BuildContext) -> VariantBuild:
        name = variant_name(point.k)
        tab = ctx.source.tabular
        work = ctx.scratch(name)
        raw = to_onnx(point.pipeline, tab.n_features, work / "converted.onnx", what=name)
        out = ort_optimize(raw, work / "model.onnx")
        names = tab.feature_names or [f"#{i}" for i in range(tab.n_features)]
        auc = f", ROC AUC {point.roc_auc:.4f}" if point.roc_auc is not None else ""
        notes = [
            f"SelectKBest({sel.selector}, k={point.k}) and the model refitted on "
            f"{sel.train_rows} training rows; the selection runs inside the graph, clients send "
            f"all {tab.n_features} features; kept: {', '.join(names[i] for i in point.kept)}",
            f"held-out F1 {point.f1:.4f}{auc} (reference F1 {sel.reference_f1:.4f})",
        ]
        return VariantBuild(name, "onnxruntime", out, notes=notes)

    return build


def judge(point: KPoint, ctx: BuildContext
          ) -> Callable[[Fidelity, dict, ValidationSet], Fidelity]:
    """A retrained model is a different model: its top-1 agreement with the reference is
    reported, not required. It passes on F1 (labels) within ``max_f1_drop`` of the
    reference's, and when its graph agrees with its own scikit-learn pipeline."""

    def decide(fid: Fidelity, outputs: dict[str, np.ndarray], rows: ValidationSet) -> Fidelity:
        budget = ctx.budget
        x = rows.tensors[ctx.source.model_signature.inputs[0].name]
        own = sklearn_outputs(point.pipeline, x, list(outputs))
        conv = compare("classification", own, outputs, budget)
        passed = (fid.f1 is not None and fid.f1 >= fid.reference_f1 - budget.max_f1_drop
                  and conv.top1_agreement >= budget.min_top1)
        text = (f"feature selection: F1 drop <= {budget.max_f1_drop} vs the reference on the "
                f"held-out rows, and top-1 agreement >= {budget.min_top1} with its own "
                f"scikit-learn pipeline (got {conv.top1_agreement:.4f}, max Δp "
                f"{conv.max_prob_diff:.2e})")
        return fid.model_copy(update={"passed": bool(passed), "budget": text})

    return decide
