"""Fidelity metrics and the budget decision, on constructed outputs."""

from __future__ import annotations

import numpy as np

from optimizers.fidelity import FidelityBudget, compare
from optimizers.selection import pareto_front

RNG = np.random.default_rng(0)
REF = RNG.standard_normal((64, 32)).astype(np.float32)


def test_embeddings_within_and_over_the_cosine_budget():
    close = REF + 0.01 * RNG.standard_normal(REF.shape).astype(np.float32)
    f = compare("embedding", {"e": REF}, {"e": close}, FidelityBudget(min_cosine=0.98))
    assert f.passed and f.cosine_min > 0.99 and f.neighbour_agreement > 0.9
    far = REF.copy()
    far[3] = -far[3]  # one row pointing the other way is enough to fail the minimum
    f = compare("embedding", {"e": REF}, {"e": far}, FidelityBudget(min_cosine=0.98))
    assert not f.passed and f.cosine_min < -0.99 and f.cosine_mean > 0.9


def test_classifiers_judged_on_top1_agreement_and_labels():
    logits = RNG.standard_normal((200, 4)).astype(np.float32)
    flipped = logits.copy()
    flipped[:4] = flipped[:4, ::-1]  # 2% of rows get another top-1
    f = compare("classification", {"y": logits}, {"y": flipped}, FidelityBudget(min_top1=0.99))
    assert not f.passed and f.top1_agreement == 0.98
    labels = logits.argmax(1)
    f = compare("classification", {"y": logits}, {"y": logits}, FidelityBudget(), labels)
    assert f.passed and f.f1 == 1.0 and f.reference_f1 == 1.0
    assert f.roc_auc == f.reference_roc_auc and f.roc_auc > 0.95  # one-vs-rest on softmax


def test_pareto_front_drops_what_is_both_slower_and_less_faithful():
    points = {"a": (100.0, 0.99), "b": (200.0, 0.98), "c": (90.0, 0.97), "d": (50.0, 1.0)}
    assert pareto_front(points) == ["b", "a", "d"]
