"""Tabular rows from a file: CSV (an optional header line, then one row of numbers per line)
or ``.npy`` (a 2-D array), checked against the number of features a model takes.

The optimizer reads validation and training data with it, ``optiserve bench`` the rows it
sends; every way a file can be wrong is a ``ValueError`` that names the file, the line and
what was expected.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, features: int | None = None) -> tuple[np.ndarray, list[str] | None]:
    """(rows as float64, header names or None). A first line that is not all numbers is the
    header; every other line must hold ``features`` numbers (the first row's count if None)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = [(n, r) for n, r in enumerate(csv.reader(f), 1) if r and any(c.strip()
                                                                                 for c in r)]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; expected CSV rows of numbers") from None
    except (OSError, csv.Error) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    header = None
    if lines and not all(is_number(c) for c in lines[0][1]):
        header = [c.strip() for c in lines[0][1]]
        lines = lines[1:]
    if not lines:
        raise ValueError(f"{path} has no data rows")
    want = features if features is not None else len(lines[0][1])
    if header is not None and len(header) != want:
        raise ValueError(f"{path}: the header has {len(header)} columns, the model takes "
                         f"{want} features")
    rows = np.empty((len(lines), want), dtype=np.float64)
    for i, (n, cells) in enumerate(lines):
        if len(cells) != want:
            raise ValueError(f"{path}:{n}: {len(cells)} columns, expected {want} (one per "
                             "feature the model takes)")
        try:
            rows[i] = [float(c) for c in cells]
        except ValueError:
            bad = next(c for c in cells if not is_number(c))
            raise ValueError(f"{path}:{n}: {bad.strip()[:40]!r} is not a number") from None
    return rows, header


def read_rows(path: str | Path, features: int | None = None) -> tuple[np.ndarray,
                                                                      list[str] | None]:
    """Rows (2-D float64) and header names (CSV only) from ``.csv`` or ``.npy``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} does not exist")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"cannot read {p} as a numpy array: {e}") from None
        if arr.ndim != 2 or arr.dtype.kind not in "iuf":
            raise ValueError(f"{p}: expected a 2-D numeric array (rows x features), got "
                             f"{arr.ndim}-D {arr.dtype}")
        if features is not None and arr.shape[1] != features:
            raise ValueError(f"{p}: {arr.shape[1]} columns, expected {features} (one per feature "
                             "the model takes)")
        if not len(arr):
            raise ValueError(f"{p} has no rows")
        return arr.astype(np.float64), None
    if p.suffix.lower() in (".csv", ".txt"):
        return read_csv(p, features)
    raise ValueError(f"{p}: tabular rows are read from .csv or .npy files")
