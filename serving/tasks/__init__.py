"""What a served text model's outputs mean beyond its tensors, done in the gateway: the
classifier's label names, token classification's entities with character offsets, Triton's
classification extension, the rows a tokenizer truncated.

The gateway tokenizes a batch (keeping each row's tokenizer encoding where a task needs its
offsets), the model replica runs the padded length groups, and :meth:`TextTask.split` turns the
groups' tensors back into one answer per request (:class:`Outputs`).
"""

from __future__ import annotations

from ..repository import Manifest
from .base import Outputs, TextTask
from .classification import (
    ClassificationTask, apply_class_counts, check_class_counts, class_strings,
)
from .token_classification import TokenClassificationTask, entities, token_label_agreement


def text_task(manifest: Manifest) -> TextTask:
    """The task of a text version (its manifest's task and postprocessing)."""
    post = manifest.postprocessing
    if manifest.task == "token-classification":
        return TokenClassificationTask(manifest)
    if manifest.task == "classification" and post is not None:
        return ClassificationTask(manifest)
    return TextTask(manifest)


__all__ = ["ClassificationTask", "Outputs", "TextTask", "TokenClassificationTask",
           "apply_class_counts", "check_class_counts", "class_strings", "entities",
           "text_task", "token_label_agreement"]
