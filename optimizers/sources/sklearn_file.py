"""``sklearn:FILE``: a fitted classifier or Pipeline saved with skops (``.skops``) or joblib.

Trust: a ``.skops`` file is audited before anything in it runs; skops loads only the types it
knows to be safe and names the others, which load only when listed with ``--trust-types``. A
joblib file is a pickle: loading it runs whatever code it names, so it loads only with
``--trust`` (files you made yourself, or whose source you trust).
"""

from __future__ import annotations

from pathlib import Path

from serving.repository import Source, sha256_file

from ..errors import SourceError
from .base import SourceModel
from .tabular import tabular_source

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def _load_skops(p: Path, trusted_types: list[str]):
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=p)
    except Exception as e:
        raise SourceError(f"{p} is not a readable skops file ({type(e).__name__}: "
                          f"{str(e)[:200]}); expected a file written by skops.io.dump") from None
    missing = [t for t in untrusted if t not in trusted_types]
    if missing:
        raise SourceError(
            f"{p} holds types outside skops' default trust: {', '.join(missing)}. skops loads "
            "only types it knows to be safe (see skops.io.get_untrusted_types for why each is "
            "not); if you made this file yourself or trust its source, review these and pass "
            f"--trust-types {','.join(missing)}"
        )
    try:
        return sio.load(p, trusted=untrusted), untrusted
    except Exception as e:
        raise SourceError(f"cannot load {p} with skops: {type(e).__name__}: {str(e)[:300]}"
                          ) from None


def _load_pickle(p: Path, trust: bool):
    if not trust:
        raise SourceError(
            f"{p} is a pickle (joblib): loading it runs whatever code the file names, so "
            "optiserve loads it only with --trust, for files you made yourself or whose source "
            "you trust. Safer: save the model with skops (skops.io.dump(model, 'model.skops')) "
            "and pass sklearn:model.skops"
        )
    import joblib

    try:
        return joblib.load(p)
    except Exception as e:
        raise SourceError(f"cannot load {p} with joblib: {type(e).__name__}: {str(e)[:300]}"
                          ) from None


def load(path: str, name: str | None = None, trust: bool = False,
         trusted_types: list[str] | None = None) -> SourceModel:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"scikit-learn model file {path} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".skops":
        estimator, trusted = _load_skops(p, list(trusted_types or []))
    elif suffix in PICKLE_SUFFIXES:
        estimator, trusted = _load_pickle(p, trust), []
    else:
        raise SourceError(f"{path}: expected a .skops file (skops.io.dump) or a joblib file "
                          f"({', '.join(PICKLE_SUFFIXES)})")
    return tabular_source(
        estimator, name=name or p.stem, where=str(p), trusted_types=trusted,
        source=Source(kind="sklearn", ref=str(p.resolve()), sha256=sha256_file(p)),
    )
