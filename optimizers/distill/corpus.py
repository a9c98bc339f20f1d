"""The unlabeled text a student is distilled on: ``--train-data FILE`` or the built-in corpus.

The built-in corpus, ``optimizers/data/distill_corpus.txt``, ships with optiserve (see
``make_corpus`` for how it was generated from installed documentation; nothing is downloaded).
It shares no sentence with ``minilm_validation.txt``, the sentences fidelity is judged on.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OptimizeError, ValidationDataError
from ..validation import read_texts

BUILTIN = Path(__file__).resolve().parent.parent / "data" / "distill_corpus.txt"


class TrainDataError(OptimizeError):
    """--train-data cannot be used for distillation."""


def load_corpus(path: str | Path | None) -> tuple[list[str], str]:
    """The training sentences and where they came from (for notes)."""
    if path is None:
        return read_texts(BUILTIN), f"the built-in corpus ({BUILTIN.name})"
    p = Path(path)
    if not p.is_file():
        raise TrainDataError(f"--train-data {path} does not exist or is not a file; expected "
                             "unlabeled text, one sentence per line (.txt) or .jsonl")
    if p.suffix.lower() not in (".txt", ".jsonl", ""):
        raise TrainDataError(f"--train-data {path}: a text model distils on unlabeled text, "
                             "one sentence per line (.txt) or .jsonl objects with \"text\"")
    try:
        texts = read_texts(p)
    except ValidationDataError as e:
        raise TrainDataError(f"--train-data: {e}") from None
    return texts, f"{len(texts)} sentences from {p.name}"
