"""The report's feature-selection section: F1 / ROC AUC and latency against k."""

from __future__ import annotations

from .feature_selection import SelectionResult


def _auc(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def selection_section(sel: SelectionResult, sizes: list[int], chosen: str | None) -> list[str]:
    lines = ["## Feature selection", "",
             f"- SelectKBest({sel.selector}) and the model refitted on {sel.train_rows} training "
             f"rows of {sel.data}; F1 / ROC AUC on the {sel.held_out_rows} held-out rows",
             f"- reference (the source model): F1 {sel.reference_f1:.4f}, ROC AUC "
             f"{_auc(sel.reference_roc_auc)}; every feature refitted on the training rows: F1 "
             f"{sel.refit_f1:.4f}, ROC AUC {_auc(sel.refit_roc_auc)}",
             f"- budget: F1 drop <= {sel.max_f1_drop}; the chosen point is the fewest features "
             "within it", ""]
    head = ["k", "F1", "ΔF1", "ROC AUC"] + [f"b{s} rows/s (p50 ms)" for s in sizes] + [
        "within budget", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sel.points:
        cells = [f"{p.throughput[s]:.0f} ({p.p50_ms[s]:.3f})" if s in p.throughput else ""
                 for s in sizes]
        mark = "**chosen**" if p.variant and p.variant == chosen else ""
        lines.append("| " + " | ".join([str(p.k), f"{p.f1:.4f}",
                                        f"{p.f1 - sel.reference_f1:+.4f}", _auc(p.roc_auc),
                                        *cells, "yes" if p.within_budget else "no", mark])
                     + " |")
    if sel.chosen is None:
        lines += ["", "No k is within the budget: the full model's variants compete as usual."]
    return lines + [""]
