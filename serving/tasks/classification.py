"""Text classifiers' label names, and Triton's classification extension for any classifier.

The extension (Triton's ``class_count``): an output requested with ``parameters.classification:
k`` comes back as BYTES of shape [rows, k] instead of its numbers, each element
``"score:index:label"`` for the k highest scores, best first (``label`` where the version has
label names, else ``"score:index"``); the score is printed as C's ``%f``, as Triton does.
"""

from __future__ import annotations

import numpy as np

from ..protocol.errors import InvalidInput
from ..repository import Manifest, Signature
from .base import TextTask


class ClassificationTask(TextTask):
    """``probabilities`` (softmax, or independent sigmoids for multi-label) come from the
    model; ``label`` (the top class's name) and, for multi-label, ``predicted`` (each class at
    or over the threshold) are added here."""

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        post = manifest.postprocessing
        self.labels = np.array([s.encode() for s in post.labels], dtype=object)
        self.multi_label = post.multi_label
        self.threshold = post.threshold
        self.prob_name = manifest.model_signature.outputs[0].name

    def finish(self, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probs = merged[self.prob_name]
        merged["label"] = self.labels[probs.argmax(1)] if len(probs) else self.labels[:0]
        if self.multi_label:
            merged["predicted"] = probs >= self.threshold
        return merged


def check_class_counts(counts: dict[str, int], signature: Signature) -> None:
    """Refuse (400) a ``classification`` request on an output that is no row of scores."""
    specs = {o.name: o for o in signature.outputs}
    for name, k in counts.items():
        spec = specs.get(name)
        if spec is None:  # validate_inputs names unknown outputs first
            continue
        if spec.datatype in ("BYTES", "BOOL") or len(spec.shape) != 2:
            raise InvalidInput(f"outputs.{name}.parameters.classification: {name!r} is "
                               f"{spec.datatype} {spec.shape}, not one row of class scores "
                               "per input row; ask it of a [-1, classes] numeric output")


def class_strings(scores: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """BYTES [rows, min(k, classes)]: ``score:index[:label]`` of the k best, best first."""
    scores = scores.reshape(len(scores), -1)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.empty((len(scores), k), dtype=object)
    for r in range(len(scores)):
        for j, idx in enumerate(order[r]):
            text = f"{float(scores[r, idx]):f}:{int(idx)}"
            if labels is not None and idx < len(labels):
                text += f":{labels[idx]}"
            out[r, j] = text.encode()
    return out


def apply_class_counts(outputs: dict[str, np.ndarray], counts: dict[str, int],
                       manifest: Manifest) -> dict[str, np.ndarray]:
    """The request's outputs with each one asked for with ``classification`` turned into its
    class strings (labels for the classifier's probabilities: the version's label names)."""
    if not counts:
        return outputs
    post = manifest.postprocessing
    labelled = manifest.model_signature.outputs[0].name if post is not None else None
    out = type(outputs)(outputs)
    if hasattr(outputs, "parameters"):
        out.parameters = outputs.parameters
    for name, k in counts.items():
        out[name] = class_strings(outputs[name], k, post.labels if name == labelled else None)
    return out
