"""Validation data: what fidelity is measured on, calibration draws from and benchmarks reuse.

Text models take a ``.txt`` file (one sentence per line) or ``.jsonl`` (objects with a ``text``
field); tensor models take ``.npz`` (one array per input name) or ``.npy`` (single-input models);
scikit-learn models take CSV or ``.npy`` rows of their features, with labels of their classes;
image classifiers take a folder of images (:mod:`optimizers.image_validation`).
Rows are evaluated in batches of 32 split by token length, as serving forms them, because dynamic
quantization's results depend on a row's batch-mates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.repository import DATATYPES
from serving.runtimes import TextEncoder, length_groups

from .errors import ValidationDataError
from .sources import SourceModel

EVAL_BATCH = 32


@dataclass
class ValidationSet:
    """Model-level input batches plus the row indices each batch holds."""

    batches: list[dict[str, np.ndarray]]
    rows_of: list[np.ndarray]
    rows: int
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    #: Row lengths (tokens) for text models; benchmarks draw realistic batches from these.
    lengths: np.ndarray | None = None
    #: Per-row model inputs for text models (ragged token ids); tensors for the rest.
    token_rows: list[np.ndarray] | None = None
    tensors: dict[str, np.ndarray] | None = None
    encoder: TextEncoder | None = None
    notes: list[str] = field(default_factory=list)
    _encodings: list | None = field(default=None, repr=False)

    def gather(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Reassemble per-batch outputs into arrays in the original row order. Per-token
        outputs ([rows, tokens, ...]) are padded with zeros to the longest row of all batches."""
        merged: dict[str, np.ndarray] = {}
        for name in outputs[0]:
            first = outputs[0][name]
            if first.ndim >= 3:
                width = max(out[name].shape[1] for out in outputs)
                full = np.zeros((self.rows, width, *first.shape[2:]), dtype=first.dtype)
                for rows, out in zip(self.rows_of, outputs):
                    full[rows, :out[name].shape[1]] = out[name]
            else:
                full = np.empty((self.rows, *first.shape[1:]), dtype=first.dtype)
                for rows, out in zip(self.rows_of, outputs):
                    full[rows] = out[name]
            merged[name] = full
        return merged

    def encodings(self) -> list:
        """The tokenizer's encoding of each text row (offsets, special tokens), as serving
        makes them."""
        if self._encodings is None:
            self._encodings = self.encoder.encode_batch(self.texts, keep=True).encodings
        return self._encodings

    def subset(self, rows: np.ndarray) -> ValidationSet:
        """A smaller set with only these rows (in ascending order), labels included."""
        rows = np.sort(rows)
        if self.token_rows is not None:
            out = _text_set([self.texts[i] for i in rows] if self.texts else None,
                            [self.token_rows[i] for i in rows], self.encoder)
        else:
            out = _tensor_set({k: v[rows] for k, v in self.tensors.items()})
        out.labels = self.labels[rows] if self.labels is not None else None
        out.notes = list(self.notes)
        return out

    def bench_batch(self, batch_size: int, index: int) -> dict[str, np.ndarray]:
        """A realistic batch: for text, ``batch_size`` rows of neighbouring lengths (as length
        grouping forms them under load), a different window for each ``index``."""
        if self.token_rows is not None:
            order = np.argsort(self.lengths, kind="stable")
            start = (index * 7919) % max(1, len(order))
            picks = [order[(start + k) % len(order)] for k in range(batch_size)]
            return self.encoder.pad([self.token_rows[i] for i in picks])
        start = (index * batch_size) % self.rows
        idx = (np.arange(batch_size) + start) % self.rows
        return {k: v[idx] for k, v in self.tensors.items()}


#: Fewest rows a split leaves on either side.
MIN_SPLIT_ROWS = 2


@dataclass
class Split:
    """Validation rows split in two disjoint parts, seeded: ``tuning`` rows are all that variant
    builders see (calibration, choosing which nodes stay fp32, accuracy control), ``held_out``
    rows judge every variant. Row indices refer to the full set."""

    tuning: ValidationSet
    held_out: ValidationSet
    tuning_rows: np.ndarray
    held_out_rows: np.ndarray
    seed: int
    #: The split in words when it is not a seeded random one.
    described: str | None = None

    @property
    def note(self) -> str:
        if self.described:
            return self.described
        total = len(self.tuning_rows) + len(self.held_out_rows)
        return (f"split (seed {self.seed}): {len(self.held_out_rows)} of {total} rows held out "
                f"to judge fidelity; the other {len(self.tuning_rows)} tune and calibrate")

    def reference(self, full: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                              dict[str, np.ndarray]]:
        """Full-set outputs cut into (tuning, held-out) parts, in each part's row order."""
        return ({k: v[self.tuning_rows] for k, v in full.items()},
                {k: v[self.held_out_rows] for k, v in full.items()})


def split_validation(vset: ValidationSet, held_out: float = 0.5, seed: int = 0) -> Split:
    """Split ``vset`` at random (seeded) into tuning and held-out rows; with labels, each
    class is split in the same proportion (a class of a single row lands on one side only).
    Rows are split by position: a row the file holds twice can land on both sides."""
    if not 0.0 < held_out < 1.0:
        raise ValidationDataError(f"--held-out must be a fraction between 0 and 1 (got "
                                  f"{held_out})")
    n = vset.rows
    if n < 2 * MIN_SPLIT_ROWS:
        raise ValidationDataError(
            f"validation data holds {n} rows; at least {2 * MIN_SPLIT_ROWS} are needed so that "
            "fidelity is judged on rows that tuning and calibration never saw")
    rng = np.random.default_rng(seed)
    k = min(n - MIN_SPLIT_ROWS, max(MIN_SPLIT_ROWS, int(round(n * held_out))))
    if vset.labels is None:
        judged = rng.permutation(n)[:k]
    else:
        # each class's rows in random order, ranked by their place within the class: taking
        # the k lowest ranks holds out every class in proportion
        rank = np.empty(n)
        for c in np.unique(vset.labels):
            rows = rng.permutation(np.flatnonzero(vset.labels == c))
            rank[rows] = (np.arange(len(rows)) + rng.random()) / len(rows)
        judged = np.argsort(rank, kind="stable")[:k]
    rest = np.setdiff1d(np.arange(n), judged)
    held, tune = np.sort(judged), np.sort(rest)
    return Split(tuning=vset.subset(tune), held_out=vset.subset(held), tuning_rows=tune,
                 held_out_rows=held, seed=seed)


def _text_set(texts, token_rows, encoder) -> ValidationSet:
    lengths = np.array([len(r) for r in token_rows])
    batches, rows_of = [], []
    for start in range(0, len(token_rows), EVAL_BATCH):
        chunk = list(range(start, min(start + EVAL_BATCH, len(token_rows))))
        for group in length_groups([lengths[i] for i in chunk]):
            idx = np.array([chunk[g] for g in group])
            batches.append(encoder.pad([token_rows[i] for i in idx]))
            rows_of.append(idx)
    return ValidationSet(batches=batches, rows_of=rows_of, rows=len(token_rows), texts=texts,
                         lengths=lengths, token_rows=token_rows, encoder=encoder)


def _tensor_set(tensors: dict[str, np.ndarray]) -> ValidationSet:
    n = len(next(iter(tensors.values())))
    batches, rows_of = [], []
    for start in range(0, n, EVAL_BATCH):
        idx = np.arange(start, min(start + EVAL_BATCH, n))
        batches.append({k: v[idx] for k, v in tensors.items()})
        rows_of.append(idx)
    return ValidationSet(batches=batches, rows_of=rows_of, rows=n, tensors=tensors)


def read_texts(path: Path) -> list[str]:
    """Sentences from ``.txt`` (one per line) or ``.jsonl`` (``{"text": ...}`` per line)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValidationDataError(f"{path} is not UTF-8 text; expected one sentence per line")
    except OSError as e:
        raise ValidationDataError(f"cannot read validation data {path}: {e.strerror or e}")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValidationDataError(f"{path}:{n}: invalid JSON ({e.msg})")
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValidationDataError(
                    f"{path}:{n}: expected an object with a string field \"text\""
                )
            texts.append(obj["text"])
    else:
        if "\x00" in raw:
            raise ValidationDataError(f"{path} looks binary; expected one sentence per line")
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if len(texts) < 2:
        raise ValidationDataError(f"{path} holds {len(texts)} sentences; expected at least 2")
    return texts


def read_tensors(path: Path, source: SourceModel) -> dict[str, np.ndarray]:
    """Input arrays from ``.npz`` (named by input) or ``.npy`` (single input), checked against
    the model signature."""
    specs = source.model_signature.inputs
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif path.suffix == ".npy":
            if len(specs) != 1:
                raise ValidationDataError(
                    f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs "
                    f"({', '.join(s.name for s in specs)}); use .npz with one array per input"
                )
            arrays = {specs[0].name: np.load(path, allow_pickle=False)}
        else:
            raise ValidationDataError(
                f"{path}: tensor models take .npz (one array per input name) or .npy"
            )
    except ValidationDataError:
        raise
    except Exception as e:
        raise ValidationDataError(f"cannot read {path} as numpy data: {e}")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ValidationDataError(
            f"{path} lacks input(s) {', '.join(missing)}; it holds {', '.join(arrays) or 'nothing'}"
        )
    out, rows = {}, None
    for s in specs:
        a = arrays[s.name]
        if a.ndim != len(s.shape) or any(d not in (-1, n) for d, n in zip(s.shape[1:], a.shape[1:])):
            raise ValidationDataError(
                f"{path}: input {s.name!r} has shape {list(a.shape)}, expected {s.shape} "
                "(-1 = any size)"
            )
        want = np.dtype(DATATYPES[s.datatype])
        if a.dtype.kind != want.kind and not (a.dtype.kind in "iu" and want.kind in "iu"):
            raise ValidationDataError(
                f"{path}: input {s.name!r} has dtype {a.dtype}, expected {want} ({s.datatype})"
            )
        if rows is not None and len(a) != rows:
            raise ValidationDataError(f"{path}: inputs have different row counts")
        rows = len(a)
        out[s.name] = a.astype(want)
    if not rows:
        raise ValidationDataError(f"{path} has no rows")
    return out


def read_labels(path: Path, rows: int, names: Sequence[str] | None = None,
                classes: int | None = None) -> np.ndarray:
    """Class labels, one per validation row (``.txt``/``.csv`` lines or ``.npy``): a class
    index, or where the model names its classes (``names``, e.g. a Hugging Face classifier's
    id2label) the class's name. Every label must be one of the model's ``classes``."""
    index = {n: i for i, n in enumerate(names or [])}
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            lines = [x.strip().split(",")[0].strip() for x in path.read_text().splitlines()
                     if x.strip()]
            values = []
            for n, x in enumerate(lines, 1):
                if x in index:  # a name first: names are what the model says it predicts
                    values.append(index[x])
                    continue
                try:
                    values.append(int(x))
                except ValueError:
                    raise ValueError(
                        f"line {n}: {x!r} is not a class index"
                        + (f" nor one of the model's labels ({', '.join(list(index)[:8])}"
                           f"{', ...' if len(index) > 8 else ''})" if index else "")) from None
            labels = np.array(values, dtype=np.int64)
    except (OSError, ValueError) as e:
        expected = "a class index or name" if index else "an integer class"
        raise ValidationDataError(
            f"cannot read labels {path}: {e}; expected {expected} per line"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValidationDataError(f"{path}: labels must be a 1-D list of integer classes")
    if len(labels) != rows:
        raise ValidationDataError(
            f"{path} has {len(labels)} labels for {rows} validation rows; expected one per row"
        )
    if classes and len(labels) and (labels.min() < 0 or labels.max() >= classes):
        row = int(np.flatnonzero((labels < 0) | (labels >= classes))[0])
        raise ValidationDataError(
            f"{path}: row {row + 1} has class {int(labels[row])}, but the model has {classes} "
            f"classes (0..{classes - 1})")
    return labels.astype(np.int64)


def _classes(source: SourceModel, names: Sequence[str] | None) -> int | None:
    """How many classes a classifier has: its label names, or its scores' last dimension."""
    if names:
        return len(names)
    for out in source.signature.outputs:
        if out.datatype.startswith("FP") and len(out.shape) == 2 and out.shape[-1] > 0:
            return out.shape[-1]
    return None


def load_validation(source: SourceModel, path: str | None, labels: str | None,
                    random_rows: int = 256) -> ValidationSet:
    """The validation set for a source: the user's file, the built-in default, or random rows."""
    if source.tabular is not None:
        return _tabular_validation(source, path, labels)
    if source.is_image:
        from .image_validation import image_validation

        return image_validation(source, path, labels)
    notes = []
    if source.is_text:
        vpath = Path(path) if path else source.default_validation
        if vpath is None:
            raise ValidationDataError("a text model needs --validation-data (one text per line)")
        if path and not vpath.is_file():
            raise ValidationDataError(f"validation data {path} does not exist")
        texts = read_texts(vpath)
        encoder = TextEncoder(source.extra_files[source.preprocessing.tokenizer_file],
                              source.preprocessing)
        vset = _text_set(texts, encoder.encode(texts), encoder)
        notes.append(f"validation: {len(texts)} texts from {vpath.name}")
    else:
        if path:
            vpath = Path(path)
            if not vpath.is_file():
                raise ValidationDataError(f"validation data {path} does not exist")
            tensors = read_tensors(vpath, source)
            notes.append(f"validation: {len(next(iter(tensors.values())))} rows from {vpath.name}")
        else:
            from .sources.torch_factory import example_inputs

            tensors = example_inputs(source.model_signature.inputs, random_rows, seed=1234)
            notes.append(f"validation: {random_rows} random rows (no --validation-data given)")
        vset = _tensor_set(tensors)
    if labels:
        if source.task != "classification":
            raise ValidationDataError("--labels needs a classifier (--task classification)")
        if source.multi_label:
            raise ValidationDataError(
                "--labels holds one class per row; a multi-label classifier's truth is a set "
                "of classes per row, which F1/ROC AUC here do not take: drop --labels")
        names = source.postprocessing.labels if source.postprocessing is not None else None
        vset.labels = read_labels(Path(labels), vset.rows, names, _classes(source, names))
    vset.notes = notes
    return vset


def tabular_set(source: SourceModel, x: np.ndarray, y: np.ndarray | None, note: str
                ) -> ValidationSet:
    """A validation set of feature rows (as FP32, what the served graph takes) and labels
    (column indices of ``probabilities``)."""
    vset = _tensor_set({source.model_signature.inputs[0].name: x.astype(np.float32)})
    vset.labels = y
    vset.notes = [note]
    return vset


def _tabular_validation(source: SourceModel, path: str | None, labels: str | None
                        ) -> ValidationSet:
    from .tabular.data import class_indices, read_class_labels, read_features

    tab = source.tabular
    if path is None:
        if tab.default_validation is None:
            raise ValidationDataError(
                f"a scikit-learn model needs --validation-data FILE (CSV/NPY rows of its "
                f"{tab.n_features} features; --labels FILE adds F1/ROC AUC), or --train-data "
                "with --select-features")
        if labels:
            raise ValidationDataError("--labels names the classes of --validation-data rows; "
                                      "the built-in example brings its own labels")
        x, raw = tab.default_validation
        y = class_indices(raw, tab.classes, "the built-in held-out rows")
        return tabular_set(source, x, y, f"validation: the {len(x)} held-out rows of the "
                                         "built-in data set, with labels")
    if Path(path).suffix == ".npz":
        x = read_tensors(Path(path), source)[source.model_signature.inputs[0].name]
    else:
        x = read_features(path, tab.n_features, tab.feature_names)
    y = read_class_labels(labels, len(x), tab.classes, f"--validation-data {path}"
                          ) if labels else None
    return tabular_set(source, x, y, f"validation: {len(x)} rows from {Path(path).name}"
                       + (" with labels" if labels else ""))
