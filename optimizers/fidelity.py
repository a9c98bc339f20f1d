"""How faithful a variant is to the reference, with no labels needed (and task metrics with them).

- embeddings: cosine similarity per row (mean, min) and top-k neighbour agreement;
- classifiers: top-1 agreement and the largest probability difference (F1 / ROC AUC with labels:
  binary F1 of the second class and its ROC AUC for two classes, macro averages for more);
- image classifiers: top-1 agreement and top-5 overlap (accuracy and the reference's accuracy
  with labels: with a thousand classes and a few labelled images, macro F1 means nothing); the
  budget is top-1 agreement;
- token classifiers: token-label agreement (special tokens and padding left out), entity F1
  (entities as serving groups them, matched on type, start and end) and the largest probability
  difference;
- anything else: cosine per flattened row and the largest absolute difference.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    min_entity_f1: float = 0.98

    def describe(self, task: str, with_labels: bool = False) -> str:
        if task == "token-classification":
            return (f"token-label agreement >= {self.min_top1} and entity F1 >= "
                    f"{self.min_entity_f1}")
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


def probabilities(x: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """Rows as probabilities: as they are when they already sum to 1 (or are a multi-label
    classifier's independent probabilities), else softmax of logits."""
    x = x.reshape(len(x), -1).astype(np.float64)
    if multi_label or (np.all(x >= 0) and np.allclose(x.sum(1), 1.0, atol=1e-3)):
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


@dataclass
class TokenRows:
    """What token classification is judged with, per validation row: the text, the positions of
    its real tokens (special tokens and padding left out) and their character offsets; and the
    version's label names."""

    texts: Sequence[str]
    keep: Sequence[np.ndarray]
    offsets: Sequence[np.ndarray]
    labels: Sequence[str]
    ignore: Sequence[str] = ("O",)


def _token_rows(ref: np.ndarray, cand: np.ndarray, tokens: TokenRows):
    """Per row: (reference labels, candidate labels, largest probability difference)."""
    for i, keep in enumerate(tokens.keep):
        pr, pc = ref[i, keep].astype(np.float64), cand[i, keep].astype(np.float64)
        yield i, pr, pc


def _token_fidelity(ref: np.ndarray, cand: np.ndarray, tokens: TokenRows, budget, n: int,
                    max_abs: float, describe: str) -> Fidelity:
    from serving.tasks import entities

    same = total = 0
    diff = 0.0
    found: list[set] = [set(), set()]
    for i, pr, pc in _token_rows(ref, cand, tokens):
        la, lb = pr.argmax(1), pc.argmax(1)
        same += int((la == lb).sum())
        total += len(la)
        if len(pr):
            diff = max(diff, float(np.abs(pr - pc).max()))
        for side, (p, idx) in enumerate(((pr, la), (pc, lb))):
            names = [tokens.labels[k] for k in idx]
            scores = p[np.arange(len(idx)), idx] if len(idx) else []
            for e in entities(tokens.texts[i], names, scores, tokens.offsets[i], tokens.ignore):
                found[side].add((i, e["entity_group"], e["start"], e["end"]))
    agreement = same / total if total else 1.0
    both = len(found[0]) + len(found[1])
    f1 = 2 * len(found[0] & found[1]) / both if both else 1.0
    passed = agreement >= budget.min_top1 and f1 >= budget.min_entity_f1
    return Fidelity(samples=n, max_abs_diff=max_abs, max_prob_diff=diff,
                    token_agreement=agreement, entity_f1=f1, passed=passed, budget=describe)


def _aligned(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]):
    """Per-token outputs of two sets of batches can be padded to different widths: pad the
    narrower with zeros (padding is never judged)."""
    ref, cand = dict(reference), dict(candidate)
    for k in ref:
        a, b = ref[k], cand[k]
        if a.ndim >= 3 and a.shape[1] != b.shape[1]:
            width = max(a.shape[1], b.shape[1])
            pad = lambda x: np.pad(x, [(0, 0), (0, width - x.shape[1])]  # noqa: E731
                                   + [(0, 0)] * (x.ndim - 2))
            ref[k], cand[k] = pad(a), pad(b)
    return ref, cand


def top_k_overlap(ref: np.ndarray, cand: np.ndarray, k: int = 5) -> float:
    """Mean share of each row's ``k`` best classes by the reference that the candidate also
    ranks among its ``k`` best."""
    k = min(k, ref.shape[1])
    a = np.argpartition(-ref, k - 1, axis=1)[:, :k]
    b = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])) if len(ref) else 1.0


def compare(task: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            budget: FidelityBudget, labels: np.ndarray | None = None, *,
            multi_label: bool = False, tokens: TokenRows | None = None,
            image: bool = False) -> Fidelity:
    """Fidelity of ``candidate`` outputs against ``reference`` outputs (same rows, same order).
    ``multi_label``: a classifier's independent (sigmoid) probabilities; ``tokens``: what token
    classification is judged with (required for that task); ``image``: an image classifier
    (top-5 overlap, accuracy with labels)."""
    names = list(reference)
    reference, candidate = _aligned(reference, candidate)
    primary = names[0]
    ref, cand = reference[primary], candidate[primary]
    n = len(ref)
    max_abs = max(float(np.max(np.abs(reference[k].astype(np.float64) - candidate[k])))
                  if reference[k].size else 0.0 for k in names)
    describe = budget.describe(task, labels is not None)
    if task == "token-classification":
        if tokens is None:  # pragma: no cover - a programming error
            raise ValueError("token classification is judged with its rows' tokens")
        return _token_fidelity(ref, cand, tokens, budget, n, max_abs, describe)
    if task == "classification":
        pr, pc = probabilities(ref, multi_label), probabilities(cand, multi_label)
        top1 = float(np.mean(pr.argmax(1) == pc.argmax(1)))
        fields = dict(top1_agreement=top1, max_prob_diff=float(np.max(np.abs(pr - pc))))
        passed = top1 >= budget.min_top1
        if image:
            fields["top5_overlap"] = top_k_overlap(pr, pc, 5)
            if labels is not None:
                fields.update(accuracy=float(np.mean(pc.argmax(1) == labels)),
                              reference_accuracy=float(np.mean(pr.argmax(1) == labels)))
            return Fidelity(samples=n, max_abs_diff=max_abs, passed=passed,
                            budget=budget.describe(task), **fields)
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


def row_scores(task: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
               *, multi_label: bool = False, tokens: TokenRows | None = None) -> np.ndarray:
    """Per-row agreement (higher is better): cosine, or the reference class's probability kept
    (token classification: the share of the row's tokens labelled alike, less the largest
    probability difference)."""
    primary = next(iter(reference))
    reference, candidate = _aligned(reference, candidate)
    if task == "token-classification":
        out = np.ones(len(reference[primary]))
        for i, pr, pc in _token_rows(reference[primary], candidate[primary], tokens):
            if len(pr):
                out[i] = float(np.mean(pr.argmax(1) == pc.argmax(1))) - np.abs(pr - pc).max()
        return out
    if task == "classification":
        pr = probabilities(reference[primary], multi_label)
        pc = probabilities(candidate[primary], multi_label)
        return 1.0 - np.abs(pr - pc).max(1) - (pr.argmax(1) != pc.argmax(1))
    return np.min([row_cosines(reference[k], candidate[k]) for k in reference], axis=0)


def judge(source, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
          budget: FidelityBudget, vset, labels: np.ndarray | None = None) -> Fidelity:
    """:func:`compare` in the source's own terms, on the rows of validation set ``vset``."""
    return compare(source.task, reference, candidate, budget, labels,
                   multi_label=source.multi_label, tokens=token_rows(source, vset),
                   image=getattr(source, "is_image", False))


def scores(source, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], vset
           ) -> np.ndarray:
    """:func:`row_scores` in the source's own terms."""
    return row_scores(source.task, reference, candidate, multi_label=source.multi_label,
                      tokens=token_rows(source, vset))


def token_rows(source, vset) -> TokenRows | None:
    """The rows' tokens for a token classifier (None for other tasks)."""
    if source.task != "token-classification":
        return None
    keep, offsets = [], []
    for e in vset.encodings():
        mask = np.asarray(e.special_tokens_mask) == 0
        keep.append(np.flatnonzero(mask))
        offsets.append(np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)[mask])
    post = source.postprocessing
    return TokenRows(vset.texts, keep, offsets, post.labels, post.ignore_labels)
