"""Tabular data for the optimizer: feature rows and class labels from files, checked against
the model, and the fixed training / held-out split feature selection uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimizers.rows import is_number, read_rows

from ..errors import ValidationDataError

#: Share of the rows held out from training for measuring F1 / ROC AUC.
HELD_OUT = 0.25
SEED = 0


def split(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): stratified by class where every class has two rows."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    strat = labels if counts.min() >= 2 else None
    tr, ho = train_test_split(idx, test_size=HELD_OUT, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(ho)


def read_features(path: str | Path, n_features: int, feature_names: list[str] | None,
                  what: str = "validation data") -> np.ndarray:
    """Rows of ``n_features`` numbers from CSV or ``.npy``; a CSV header must name the
    model's features in its order when the model knows their names."""
    try:
        rows, header = read_rows(path, n_features)
    except ValueError as e:
        raise ValidationDataError(f"{what}: {e}") from None
    if header is not None and feature_names is not None and header != feature_names:
        i = next(i for i, (a, b) in enumerate(zip(header, feature_names)) if a != b)
        raise ValidationDataError(
            f"{what}: {path}: column {i + 1} is {header[i]!r}, the model's feature {i + 1} is "
            f"{feature_names[i]!r}; put the columns in the order the model was fitted on"
        )
    if not np.all(np.isfinite(rows)):
        r = int(np.argwhere(~np.isfinite(rows))[0][0])
        raise ValidationDataError(f"{what}: {path}: data row {r + 1} holds NaN or infinity")
    return rows


def class_indices(values: np.ndarray, classes: list, where: str) -> np.ndarray:
    """Label values -> column indices of ``probabilities``; unknown values are an error."""
    index = {str(c): i for i, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        key = str(v.item() if hasattr(v, "item") else v).strip()
        if key not in index:
            try:  # 1.0 in a float file for class 1
                key = str(int(float(key))) if float(key).is_integer() else key
            except ValueError:
                pass
        if key not in index:
            raise ValidationDataError(f"{where}: label {key!r} (row {i + 1}) is not one of the "
                                      f"model's classes {classes}")
        out[i] = index[key]
    return out


def read_class_labels(path: str | Path, rows: int, classes: list, rows_from: str
                      ) -> np.ndarray:
    """One class per data row (``.txt``/``.csv`` lines, an optional header, or ``.npy``), as
    column indices of the model's ``probabilities``."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npy":
            values = np.load(p, allow_pickle=False)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ValidationDataError(f"labels {p}: expected a 1-D array, got shape "
                                          f"{list(values.shape)}")
        else:
            lines = [x.split(",")[0].strip() for x in p.read_text().splitlines() if x.strip()]
            known = {str(c) for c in classes}
            if lines and lines[0] not in known and not is_number(lines[0]):
                lines = lines[1:]  # a header
            values = np.array(lines, dtype=object)
    except ValidationDataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValidationDataError(f"cannot read labels {p}: {e}; expected one class per line"
                                  ) from None
    if len(values) != rows:
        raise ValidationDataError(f"labels {p} has {len(values)} labels for the {rows} rows of "
                                  f"{rows_from}; expected one per row")
    return class_indices(values, classes, f"labels {p}")


@dataclass
class TrainingData:
    """Labelled rows for feature selection, split once: fit on ``train``, measure on
    ``held_out``. Labels are column indices of ``probabilities``."""

    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    held_out: np.ndarray
    origin: str

    @property
    def classes_seen(self) -> int:
        return len(np.unique(self.y))


def load_training(source, path: str | None, labels: str | None) -> TrainingData:
    """``--train-data``/``--labels``, or the built-in example's own data set."""
    tab = source.tabular
    if path is None:
        if tab.default_train is None:
            raise ValidationDataError(
                "--select-features needs --train-data FILE (CSV/NPY rows of the model's "
                f"{tab.n_features} features) and --labels FILE (one class per row)")
        x, raw = tab.default_train
        y = class_indices(raw, tab.classes, "the built-in data set")
        origin = f"the built-in data set ({len(x)} rows)"
    else:
        if labels is None:
            raise ValidationDataError(f"--train-data {path} needs --labels FILE (one class per "
                                      "row of it)")
        x = read_features(path, tab.n_features, tab.feature_names, what="--train-data")
        y = read_class_labels(labels, len(x), tab.classes, f"--train-data {path}")
        origin = f"{Path(path).name} ({len(x)} rows)"
    if len(np.unique(y)) < 2:
        raise ValidationDataError(f"training data {origin} holds a single class; feature "
                                  "selection needs at least two")
    if len(x) < 8:
        raise ValidationDataError(f"training data {origin} has {len(x)} rows; expected at "
                                  "least 8 to fit on three quarters and measure on the rest")
    train, held_out = split(y)
    return TrainingData(x, y, train, held_out, origin)
