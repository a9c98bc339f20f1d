"""Making a tune's best configuration the default, without changing what was published.

- :func:`publish_tuned` publishes a *new* version of the model: the same artifacts (copied and
  hashed again), the manifest's batching policy replaced by the tuned one (its ``reason`` records
  the whole configuration and the measurement). The tuned version itself is never modified.
- :func:`write_serve_config` writes a complete serve config with the tuned batching and layout,
  for ``optiserve serve --config``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from serving.repository import BatchingPolicy, ModelRepository, VersionRef
from .scoring import Trial


def describe(trial: Trial, slo_ms: float) -> str:
    c, s = trial.config, trial.best
    return (f"optiserve tune: {trial.value:.1f} req/s with p99 {s.p99_ms:.1f} ms <= "
            f"{slo_ms:g} ms ({s.mode} loop at {s.load:g}); serve with {c['replicas']} "
            f"replica(s) x {c['threads']} thread(s), {c['gateway_replicas']} gateway replica(s)")


def publish_tuned(repo: ModelRepository, model: str, version: int, trial: Trial,
                  slo_ms: float) -> VersionRef:
    """Publish a new version: the tuned version's files, the tuned batching as its default."""
    src = repo.open(model, version)  # verified: what is copied is what was published
    policy = BatchingPolicy(max_batch_size=trial.config["max_batch_size"],
                            max_delay_ms=float(trial.config["max_delay_ms"]),
                            p99_target_ms=slo_ms, reason=describe(trial, slo_ms))

    def fill(staging: Path):
        for a in src.manifest.artifacts:
            dst = staging / a.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src.path / a.path, dst)
        return src.manifest.model_copy(update={"batching": policy})

    return repo.publish(model, fill)


def write_serve_config(path: str | Path, doc: dict) -> Path:
    """Write a serve config (validated first) that ``optiserve serve --config`` runs."""
    from serving.config import validate_serve_config

    validate_serve_config(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path
