"""The unlabeled text a student is distilled on: ``--train-data FILE`` or the built-in corpus.

The built-in corpus is generated at first use from what is installed (``make_corpus``: the
standard library's docstrings and composed sentences; nothing is downloaded) and cached under
``$OPTISERVE_CACHE`` (default ``~/.cache/optiserve``). It shares no sentence with
``minilm_validation.txt``, the sentences fidelity is judged on.
"""

from __future__ import annotations

from pathlib import Path

from serving.settings import reload

from ..errors import OptimizeError, ValidationDataError
from ..validation import read_texts

#: Bumped when ``make_corpus`` changes what it generates.
CORPUS_VERSION = 1


def builtin_corpus() -> Path:
    """The built-in corpus file, generated and cached on first use (one per Python version)."""
    import os
    import sys
    import tempfile

    cache = Path(reload().cache or Path.home() / ".cache" / "optiserve")
    path = cache / (f"distill-corpus-v{CORPUS_VERSION}-py{sys.version_info[0]}"
                    f"{sys.version_info[1]}.txt")
    if path.is_file():
        return path
    from .make_corpus import build

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cache, delete=False, suffix=".tmp",
                                     encoding="utf-8") as f:
        f.write("\n".join(build()) + "\n")
    os.replace(f.name, path)  # whole or not at all, also with two runs at once
    return path


class TrainDataError(OptimizeError):
    """--train-data cannot be used for distillation."""


def load_corpus(path: str | Path | None) -> tuple[list[str], str]:
    """The training sentences and where they came from (for notes)."""
    if path is None:
        path = builtin_corpus()
        return read_texts(path), f"the built-in corpus ({path.name})"
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


def augment(texts: list[str], vocabulary: list[str], factor: float, seed: int) -> list[str]:
    """More varied training text from ``texts``: for every ``1 / factor`` sentence, one of
    - a splice: the first part of one sentence and the last part of another;
    - a bag of 2-12 random whole words of the tokenizer's vocabulary (query-like, no grammar);
    - a sentence with a random quarter of its words dropped.
    The teacher's outputs on these cover more of its input space than the corpus alone, which
    helps the student on text unlike the corpus. Seeded: the same texts give the same result."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(int(round(len(texts) * factor))):
        kind = rng.random()
        if kind < 0.4 and len(texts) > 1:
            a, b = (t.split() for t in rng.sample(texts, 2))
            out.append(" ".join(a[: max(1, len(a) // 2)] + b[len(b) // 2:]))
        elif kind < 0.75 and vocabulary:
            out.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 12))))
        else:
            words = rng.choice(texts).split()
            kept = [w for w in words if rng.random() > 0.25] or words[:1]
            out.append(" ".join(kept))
    return out


def vocabulary_words(tokenizer_file) -> list[str]:
    """Whole alphabetic words of a WordPiece/BPE tokenizer's vocabulary (no pieces, no
    special tokens), sorted."""
    import json

    try:
        vocab = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    words = vocab if isinstance(vocab, dict) else dict(vocab)
    return sorted(w for w in words if w.isalpha() and w.isascii() and len(w) >= 3)
