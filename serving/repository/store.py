"""A Triton-like model repository on a filesystem: ``<root>/<model>/<version>/manifest.json``.

Publishing is atomic: files are written into a hidden staging directory beside the versions,
fsynced, and renamed into place while holding the model's publish lock, so a reader sees a whole
version or none, and concurrent publishers get distinct version numbers. Version numbers only grow:
a counter file remembers the highest number ever handed out, even if that version is deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..settings import reload, settings
from .schema import READABLE_SCHEMA_VERSIONS, Artifact, Manifest, check_model_name

MANIFEST = "manifest.json"
_STAGING_PREFIX = ".staging-"
_LOCK = ".publish.lock"
_COUNTER = ".last-version"


class RepositoryError(Exception):
    """Base class for model repository errors; the message says what is wrong."""


class ModelNotFoundError(RepositoryError):
    """The model or version does not exist."""


class IntegrityError(RepositoryError):
    """A version's files do not match its manifest."""


class ManifestError(RepositoryError):
    """A manifest is missing, unreadable or invalid."""


def resolve_root(repository: str | os.PathLike | None = None) -> Path:
    """The repository location: the argument, else ``$OPTISERVE_REPOSITORY``, else ``./model-repository``."""
    if repository:
        return Path(repository)
    return Path(reload().repository)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Parse ``MODEL`` or ``MODEL:VERSION``."""
    name, sep, version = ref.partition(":")
    check_model_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"version in {ref!r} must be a positive integer, e.g. {name}:1")
    return name, int(version)


@dataclass(frozen=True)
class VersionRef:
    """A published version: its manifest and directory."""

    manifest: Manifest
    path: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def file(self, artifact_path: str) -> Path:
        self.manifest.artifact(artifact_path)  # KeyError for files the manifest doesn't list
        return self.path / artifact_path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


class ModelRepository:
    """Reads and publishes model versions under one root directory."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_root(root)

    # ---- reading -------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Model names that have at least one published version."""
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and self.versions(d.name)
        )

    def versions(self, model: str) -> list[int]:
        """Published version numbers of a model, ascending."""
        mdir = self.root / model
        if not mdir.is_dir():
            return []
        return sorted(
            int(d.name) for d in mdir.iterdir()
            if d.name.isdigit() and (d / MANIFEST).is_file()
        )

    def latest(self, model: str) -> int:
        versions = self.versions(model)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise ModelNotFoundError(
                f"model {model!r} has no published version in {self.root} (models: {known})"
            )
        return versions[-1]

    def manifest(self, model: str, version: int | None = None) -> Manifest:
        return self.get(model, version).manifest

    def get(self, model: str, version: int | None = None) -> VersionRef:
        """The version's manifest and directory, without hashing its files."""
        if version is None:
            version = self.latest(model)
        vdir = self.root / model / str(version)
        mpath = vdir / MANIFEST
        if not mpath.is_file():
            have = self.versions(model)
            if not have:
                self.latest(model)  # raises with the list of models
            raise ModelNotFoundError(
                f"{model}:{version} does not exist in {self.root} (versions: "
                f"{', '.join(map(str, have))})"
            )
        manifest = read_manifest(mpath)
        if manifest.name != model or manifest.version != version:
            raise ManifestError(
                f"{mpath} says {manifest.name}:{manifest.version}, but lives at {model}:{version}"
            )
        return VersionRef(manifest, vdir)

    def verify(self, model: str, version: int) -> list[str]:
        """Problems with a version's files (empty when every hash matches)."""
        try:
            ref = self.get(model, version)
        except RepositoryError as e:
            return [str(e)]
        return verify_files(ref.manifest, ref.path)

    def open(self, model: str, version: int | None = None) -> VersionRef:
        """Like :meth:`get`, and verify every artifact's sha256; refuse a mismatch."""
        ref = self.get(model, version)
        problems = verify_files(ref.manifest, ref.path)
        if problems:
            raise IntegrityError(
                f"{ref.name}:{ref.version} failed verification: " + "; ".join(problems)
            )
        return ref

    # ---- publishing ----------------------------------------------------------------------
    def publish(
        self,
        model: str,
        fill: Callable[[Path], Manifest],
        *,
        before_rename: Callable[[Path], None] | None = None,
    ) -> VersionRef:
        """Publish a new version atomically and return it.

        ``fill(staging_dir)`` writes the version's files into ``staging_dir`` and returns a
        manifest whose ``version`` is a placeholder and whose ``artifacts`` list the files;
        the hashes are computed here from the bytes on disk, so they cannot disagree with them.
        """
        check_model_name(model)
        mdir = self.root / model
        try:
            mdir.mkdir(parents=True, exist_ok=True)
            staging = mdir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
        except OSError as e:
            raise RepositoryError(
                f"cannot write to model repository {self.root}: {e.strerror or e}. "
                "Expected a writable directory (set --repository or $OPTISERVE_REPOSITORY)"
            ) from e
        try:
            draft = fill(staging)
            artifacts = [
                Artifact(path=a.path, sha256=sha256_file(staging / a.path),
                         size_bytes=(staging / a.path).stat().st_size)
                for a in draft.artifacts
            ]
            with self._lock(mdir):
                version = self._next_version(mdir)
                manifest = draft.model_copy(update={
                    "name": model, "version": version, "artifacts": artifacts,
                })
                manifest = Manifest.model_validate(manifest.model_dump())
                write_manifest(staging / MANIFEST, manifest)
                _fsync_tree(staging)
                if before_rename is not None:
                    before_rename(staging)
                target = mdir / str(version)
                os.rename(staging, target)
                (mdir / _COUNTER).write_text(f"{version}\n")
                _fsync_dir(mdir)
            return VersionRef(manifest, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._clean_stale(mdir)

    @contextmanager
    def _lock(self, mdir: Path) -> Iterator[None]:
        with open(mdir / _LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _next_version(self, mdir: Path) -> int:
        highest = max([0, *(int(d.name) for d in mdir.iterdir() if d.name.isdigit())])
        counter = mdir / _COUNTER
        if counter.is_file():
            text = counter.read_text().strip()
            if text.isdigit():
                highest = max(highest, int(text))
        return highest + 1

    def _clean_stale(self, mdir: Path) -> None:
        now = time.time()
        for d in mdir.glob(f"{_STAGING_PREFIX}*"):
            try:
                if now - d.stat().st_mtime > settings().stale_staging_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass


def read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in (None,
                                                                  *READABLE_SCHEMA_VERSIONS):
        raise ManifestError(
            f"{path} has schema_version {raw.get('schema_version')!r}; this optiserve reads "
            f"schema_version {', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (upgrade optiserve)"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise ManifestError(f"invalid manifest {path}: {e}") from e


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


def verify_files(manifest: Manifest, vdir: Path) -> list[str]:
    """Compare every artifact with its recorded size and sha256; list what differs or is extra."""
    problems = []
    listed = {a.path for a in manifest.artifacts}
    for a in manifest.artifacts:
        f = vdir / a.path
        if not f.is_file():
            problems.append(f"{a.path} is missing")
            continue
        digest = sha256_file(f)
        if digest != a.sha256:
            problems.append(
                f"{a.path} has sha256 {digest[:12]}…, the manifest says {a.sha256[:12]}…"
            )
    for f in vdir.rglob("*"):
        rel = f.relative_to(vdir).as_posix()
        if f.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel} is not listed in the manifest")
    return problems
