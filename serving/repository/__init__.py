"""The model repository: the contract between ``optimizers`` (writes) and ``serving`` (reads)."""

from .schema import (
    DATATYPES,
    Artifact,
    BatchingPolicy,
    Fidelity,
    ImagePreprocessing,
    LatencyPoint,
    Manifest,
    Measurements,
    Postprocessing,
    Signature,
    Source,
    TensorSpec,
    TextPreprocessing,
)
from .store import (
    IntegrityError,
    ManifestError,
    ModelNotFoundError,
    ModelRepository,
    RepositoryError,
    VersionRef,
    parse_ref,
    resolve_root,
    sha256_file,
)

__all__ = [
    "DATATYPES", "Artifact", "BatchingPolicy", "Fidelity", "ImagePreprocessing",
    "IntegrityError", "LatencyPoint", "Manifest", "ManifestError", "Measurements",
    "ModelNotFoundError", "ModelRepository", "Postprocessing", "RepositoryError", "Signature",
    "Source", "TensorSpec", "TextPreprocessing", "VersionRef", "parse_ref", "resolve_root",
    "sha256_file",
]
