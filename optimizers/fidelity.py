"""How faithful a variant is to the reference, with no labels needed (and task metrics with them).

- embeddings: cosine similarity per row (mean, min) and top-k neighbour agreement;
- classifiers: top-1 agreement and the largest probability difference (F1 / ROC AUC with labels:
  binary F1 of the second class and its ROC AUC for two classes, macro averages for more);
- anything else: cosine per flattened row and the largest absolute difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.repository import Fidelity


@dataclass(frozen=True)
class FidelityBudget:
    """What a variant must reach to be chosen."""

    min_cosine: float = 0.98
    min_top1: float = 0.99
    max_f1_drop: float = 0.01
    neighbours: int = 5

    def describe(self, task: str, with_labels: bool = False) -> str:
        if task == "classification":
            text = f"top-1 agreement >= {self.min_top1}"
            if with_labels:
                text += f" and F1 drop <= {self.max_f1_drop}"
            return text
        return f"cosine min >= {self.min_cosine}"


def row_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (flattened), 1.0 where both rows are zero."""
    r = ref.reshape(len(ref), -1).astype(np.float64)
    c = cand.reshape(len(cand), -1).astype(np.float64)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    dot = (r * c).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (nr * nc)
    both_zero = (nr == 0) & (nc == 0)
    cos = np.where(both_zero, 1.0, np.nan_to_num(cos, nan=0.0))
    return np.clip(cos, -1.0, 1.0)


def neighbour_agreement(ref: np.ndarray, cand: np.ndarray, k: int) -> float | None:
    """Mean share of each row's k nearest neighbours (by cosine) that both agree on."""
    n = len(ref)
    if n <= k:
        return None

    def topk(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    a, b = topk(ref.reshape(n, -1).astype(np.float64)), topk(cand.reshape(n, -1).astype(np.float64))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def probabilities(x: np.ndarray) -> np.ndarray:
    """Rows as probabilities: as they are when they already sum to 1, else softmax of logits."""
    x = x.reshape(len(x), -1).astype(np.float64)
    if np.all(x >= 0) and np.allclose(x.sum(1), 1.0, atol=1e-3):
        return x
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _task_metrics(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float | None]:
    from sklearn.metrics import f1_score, roc_auc_score

    binary = probs.shape[1] == 2
    f1 = float(f1_score(labels, probs.argmax(1), average="binary" if binary else "macro",
                        labels=None if binary else list(range(probs.shape[1])),
                        zero_division=0.0))
    try:
        if binary:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            auc = float(roc_auc_score(labels, probs, multi_class="ovr",
                                      labels=list(range(probs.shape[1]))))
    except ValueError:  # a class absent from the labels
        auc = None
    return f1, auc


def compare(task: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            budget: FidelityBudget, labels: np.ndarray | None = None) -> Fidelity:
    """Fidelity of ``candidate`` outputs against ``reference`` outputs (same rows, same order)."""
    names = list(reference)
    primary = names[0]
    ref, cand = reference[primary], candidate[primary]
    n = len(ref)
    max_abs = max(float(np.max(np.abs(reference[k].astype(np.float64) - candidate[k])))
                  if reference[k].size else 0.0 for k in names)
    describe = budget.describe(task, labels is not None)
    if task == "classification":
        pr, pc = probabilities(ref), probabilities(cand)
        top1 = float(np.mean(pr.argmax(1) == pc.argmax(1)))
        fields = dict(top1_agreement=top1, max_prob_diff=float(np.max(np.abs(pr - pc))))
        passed = top1 >= budget.min_top1
        if labels is not None:
            f1, auc = _task_metrics(pc, labels)
            rf1, rauc = _task_metrics(pr, labels)
            fields.update(f1=f1, roc_auc=auc, reference_f1=rf1, reference_roc_auc=rauc)
            passed = passed and f1 >= rf1 - budget.max_f1_drop
        return Fidelity(samples=n, max_abs_diff=max_abs, passed=passed, budget=describe, **fields)
    cos = np.min([row_cosines(reference[k], candidate[k]) for k in names], axis=0)
    fields = dict(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
    if task == "embedding":
        fields["neighbour_agreement"] = neighbour_agreement(ref, cand, budget.neighbours)
    passed = bool(cos.min() >= budget.min_cosine)
    return Fidelity(samples=n, max_abs_diff=max_abs, passed=passed, budget=describe, **fields)


def row_scores(task: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]
               ) -> np.ndarray:
    """Per-row agreement (higher is better): cosine, or the reference class's probability kept."""
    primary = next(iter(reference))
    if task == "classification":
        pr, pc = probabilities(reference[primary]), probabilities(candidate[primary])
        return 1.0 - np.abs(pr - pc).max(1) - (pr.argmax(1) != pc.argmax(1))
    return np.min([row_cosines(reference[k], candidate[k]) for k in reference], axis=0)
