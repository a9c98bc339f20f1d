"""The model repository: atomic publish, tamper detection, concurrent publishers, errors."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.repository import (
    Artifact,
    BatchingPolicy,
    Fidelity,
    IntegrityError,
    Manifest,
    ManifestError,
    Measurements,
    ModelNotFoundError,
    ModelRepository,
    RepositoryError,
    Signature,
    Source,
    TensorSpec,
)
from tests.helpers import ROOT, run_cli


def draft(name: str = "toy", files: tuple[str, ...] = ("model.onnx",)) -> Manifest:
    sig = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
                    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])])
    return Manifest(
        name=name, version=1, variant="onnx-fp32", task="generic", runtime="onnxruntime",
        model_file=files[0], model_signature=sig, signature=sig,
        artifacts=[Artifact(path=f, sha256="0" * 64, size_bytes=0) for f in files],
        measurements=Measurements(fidelity=Fidelity(samples=1, passed=True, budget="test"),
                                  size_bytes=1),
        batching=BatchingPolicy(max_batch_size=8, max_delay_ms=1.0),
        source=Source(kind="onnx", ref="toy.onnx"), optiserve_version="test",
    )


def publish(repo: ModelRepository, payload: bytes = b"weights", name: str = "toy", **kw):
    def fill(staging: Path) -> Manifest:
        (staging / "model.onnx").write_bytes(payload)
        return draft(name)

    return repo.publish(name, fill, **kw)


def test_publish_then_read_back_with_hashes(repo_dir):
    repo = ModelRepository(repo_dir)
    ref = publish(repo, b"abc")
    assert (ref.name, ref.version) == ("toy", 1)
    assert repo.models() == ["toy"] and repo.versions("toy") == [1]
    m = repo.manifest("toy")
    # sha256("abc")
    assert m.artifact("model.onnx").sha256 == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert m.artifact("model.onnx").size_bytes == 3
    assert repo.open("toy", 1).path == repo_dir / "toy" / "1"
    assert publish(repo).version == 2
    assert repo.latest("toy") == 2


def test_versions_only_grow_even_after_deleting_the_latest(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo), publish(repo)
    import shutil

    shutil.rmtree(repo_dir / "toy" / "2")
    assert repo.versions("toy") == [1]
    assert publish(repo).version == 3


def test_tampered_artifact_is_refused_naming_the_file(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo, b"original")
    (repo_dir / "toy" / "1" / "model.onnx").write_bytes(b"tampered")
    problems = repo.verify("toy", 1)
    assert len(problems) == 1 and problems[0].startswith("model.onnx has sha256")
    with pytest.raises(IntegrityError, match="toy:1 failed verification: model.onnx has sha256"):
        repo.open("toy", 1)
    result = run_cli("repo", "verify", "--repository", str(repo_dir))
    assert result.returncode != 0
    assert "model.onnx has sha256" in result.stderr and "FAIL" in result.stderr


def test_extra_and_missing_files_fail_verification(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo)
    (repo_dir / "toy" / "1" / "backdoor.py").write_text("print('hi')")
    assert repo.verify("toy", 1) == ["backdoor.py is not listed in the manifest"]
    (repo_dir / "toy" / "1" / "backdoor.py").unlink()
    (repo_dir / "toy" / "1" / "model.onnx").unlink()
    assert repo.verify("toy", 1) == ["model.onnx is missing"]


def test_verify_cli_passes_on_an_intact_repository(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo), publish(repo, name="other")
    result = run_cli("repo", "verify", "--repository", str(repo_dir))
    assert result.returncode == 0, result.stderr
    assert "2 version(s) verified" in result.stdout
    shown = run_cli("repo", "show", "toy:1", "--json", "--repository", str(repo_dir))
    assert json.loads(shown.stdout)["variant"] == "onnx-fp32"
    listed = run_cli("repo", "list", "--repository", str(repo_dir))
    assert "toy" in listed.stdout and "other" in listed.stdout


_CRASH_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from tests.serving.test_repository import publish
from serving.repository import ModelRepository
def hang(staging):
    print("READY", staging, flush=True)
    time.sleep(60)
publish(ModelRepository({repo!r}), before_rename=hang)
"""


def test_crash_mid_publish_leaves_no_visible_version(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT.format(root=str(ROOT), repo=str(repo_dir))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        staging = Path(line.split()[1])
        assert (staging / "manifest.json").is_file()  # everything written, not yet renamed
        os.kill(proc.pid, signal.SIGKILL)  # the publisher dies before the rename
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert repo.versions("toy") == [1]
    assert run_cli("repo", "verify", "--repository", str(repo_dir)).returncode == 0
    assert publish(repo).version == 2  # the lock was released with the process


def _publish_many(repo_dir: str, n: int, queue) -> None:
    repo = ModelRepository(repo_dir)
    for _ in range(n):
        queue.put(publish(repo, os.urandom(64)).version)


def test_concurrent_publishers_get_distinct_versions(repo_dir):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(str(repo_dir), 5, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    versions = [queue.get(timeout=120) for _ in range(20)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(versions) == list(range(1, 21))
    repo = ModelRepository(repo_dir)
    assert repo.versions("toy") == list(range(1, 21))
    assert all(not repo.verify("toy", v) for v in range(1, 21))


def test_failed_fill_publishes_nothing(repo_dir):
    repo = ModelRepository(repo_dir)

    def fill(staging: Path) -> Manifest:
        (staging / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        repo.publish("toy", fill)
    assert repo.versions("toy") == []
    assert not list((repo_dir / "toy").glob(".staging-*"))


def test_unwritable_repository_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    repo = ModelRepository(blocker / "repo")
    with pytest.raises(RepositoryError, match="cannot write to model repository .*writable"):
        publish(repo)


def test_unknown_model_and_version_errors(repo_dir):
    repo = ModelRepository(repo_dir)
    with pytest.raises(ModelNotFoundError, match="'nope' has no published version"):
        repo.get("nope")
    publish(repo)
    with pytest.raises(ModelNotFoundError, match=r"toy:7 does not exist .*versions: 1"):
        repo.get("toy", 7)
    result = run_cli("repo", "show", "toy:7", "--repository", str(repo_dir))
    assert result.returncode != 0 and "toy:7 does not exist" in result.stderr


def test_manifest_from_a_newer_schema_is_refused(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo)
    path = repo_dir / "toy" / "1" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="schema_version 99; this optiserve reads"):
        repo.get("toy", 1)


def test_a_schema_1_manifest_still_loads(repo_dir):
    """Versions published before schema 2 (labels, entities, pad id) load unchanged; a text
    version of schema 1 had no pad id or truncation side: the defaults it was served with."""
    repo = ModelRepository(repo_dir)
    publish(repo)
    path = repo_dir / "toy" / "1" / "manifest.json"
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 2
    raw["schema_version"] = 1
    for key in ("postprocessing",):
        raw.pop(key, None)
    path.write_text(json.dumps(raw))
    m = repo.get("toy", 1).manifest
    assert m.schema_version == 1 and m.postprocessing is None
    raw["schema_version"] = 4
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="schema_version 4; this optiserve reads "
                                            "schema_version 1, 2, 3"):
        repo.get("toy", 1)


def test_a_version_is_written_with_the_lowest_schema_that_expresses_it(repo_dir):
    """Text and tensor versions stay schema 2 (a gateway one release older reads them during an
    upgrade); image preprocessing needs 3, and a manifest claiming 2 with it is refused."""
    repo = ModelRepository(repo_dir)
    publish(repo)
    raw = json.loads((repo_dir / "toy" / "1" / "manifest.json").read_text())
    assert raw["schema_version"] == 2
    image = {"height": 8, "width": 8, "mean": [0.5] * 3, "std": [0.5] * 3}
    raw.pop("schema_version")
    assert Manifest.model_validate({**raw, "image_preprocessing": image}).schema_version == 3
    with pytest.raises(ValueError, match="image_preprocessing needs schema_version 3"):
        Manifest.model_validate({**raw, "schema_version": 2, "image_preprocessing": image})


def test_manifest_rejects_paths_outside_the_version():
    with pytest.raises(ValueError, match="must be relative"):
        Artifact(path="../../etc/passwd", sha256="0" * 64, size_bytes=1)
    with pytest.raises(ValueError, match="model name"):
        draft(name="bad/name")


def test_stale_staging_dirs_are_cleaned(repo_dir):
    repo = ModelRepository(repo_dir)
    publish(repo)
    stale = repo_dir / "toy" / ".staging-deadbeef"
    stale.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    publish(repo)
    assert not stale.exists()
