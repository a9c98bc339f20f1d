"""The images, one per role. Docker cannot run here, so the Dockerfiles are checked as text:
pinned multi-stage builds, a non-root user, the role's extra (as the README documents it) with
the pins of constraints.txt, and COPY sources that exist. What each role imports without the
other stacks is run in tests/test_dependencies.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from .conftest import ROOT

#: the Ray images (head and workers must run one Python and one Ray)
DOCKERFILES = {"cpu": ROOT / "docker/Dockerfile.cpu", "gpu": ROOT / "docker/Dockerfile.gpu"}
#: every image and the extra of the role it installs ("" : the base dependencies only)
IMAGES = {"cpu": "serve", "gpu": "serve-gpu", "controller": "controller", "init": ""}


def dockerfile(flavor: str) -> Path:
    return ROOT / f"docker/Dockerfile.{flavor}"
EXTRAS = re.compile(r"""\.\[([a-z0-9_,-]+)\]""")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for op, args in instructions(path):
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, args))
    return out


def build_args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in instructions(path) if op == "ARG" and "=" in a)


def pip_installs(path: Path) -> list[str]:
    return [cmd for op, args in instructions(path) if op == "RUN"
            for cmd in args.split("&&") if "pip install" in cmd]


def readme_installs() -> list[str]:
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing: the images must install what it documents"
    text = re.sub(r"\\\n", " ", readme.read_text())
    return [line for line in text.splitlines()
            if "pip install" in line and "constraints.txt" in line]


def extras(cmd: str) -> set[str]:
    return {e for m in EXTRAS.findall(cmd) for e in m.split(",")}


@pytest.mark.parametrize("flavor", sorted(IMAGES))
def test_installs_its_roles_extra_as_the_readme_documents(flavor):
    path = dockerfile(flavor)
    installs = pip_installs(path)
    assert len(installs) == 1, installs
    (cmd,) = installs
    tokens = shlex.split(cmd)
    assert "-c" in tokens and tokens[tokens.index("-c") + 1] == "constraints.txt", cmd
    want = {IMAGES[flavor]} if IMAGES[flavor] else set()
    assert extras(cmd) == want, cmd
    if not want:
        assert "." in tokens and "--no-deps" not in tokens, cmd
        return
    documented = [extras(line) for line in readme_installs()]
    assert want in documented, (
        f"README.md has no `pip install -c constraints.txt '.[{IMAGES[flavor]}]'`; "
        f"found {documented}")


def test_readme_extras_exist_in_pyproject():
    import tomllib

    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for line in readme_installs():
        assert extras(line) <= set(optional), line


@pytest.mark.parametrize("flavor", sorted(IMAGES))
def test_copy_sources_exist(flavor):
    for stage in stages(dockerfile(flavor)):
        for op, args in stage:
            if op not in ("COPY", "ADD") or "--from=" in args:
                continue
            *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
            for s in sources:
                assert (ROOT / s).exists(), f"{dockerfile(flavor).name}: COPY {s} does not exist"
    # every package the console script imports is in the image
    copied = {shlex.split(a)[0] for op, a in stages(dockerfile(flavor))[0] if op == "COPY"}
    assert {"optiserve", "serving", "optimizers"} <= copied, copied


@pytest.mark.parametrize("flavor", sorted(IMAGES))
def test_pinned_multi_stage_non_root(flavor):
    path = dockerfile(flavor)
    st = stages(path)
    assert len(st) >= 2, "multi-stage: a build stage and a runtime stage"
    args = build_args(path)
    for stage in st:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and re.search(r"\d+\.\d+", tag)), \
            f"{path.name}: base image {image} is not pinned to a version or digest"
        assert "latest" not in tag
    final = st[-1]
    users = [a for op, a in final if op == "USER"]
    assert users, f"{path.name}: the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path.name}: runs as {users[-1]}"
    assert any(op == "COPY" and "--from=build" in a for op, a in final)
    # the runtime stage installs nothing from PyPI: everything comes from the build stage
    assert not any("pip install" in a for op, a in final if op == "RUN")


def test_chart_uses_every_image():
    values = (ROOT / "helm/optiserve/values.yaml").read_text()
    for key in ("image:", "gpuImage:", "initImage:", "controllerImage:"):
        assert key in values, key
    for flavor in IMAGES:
        assert f"-t optiserve:0.1.0-{flavor}" in dockerfile(flavor).read_text()


def test_dockerfile_checks_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCOPY nothing-here /x\nRUN pip install '.[cpu]'\n")
    assert len(stages(bad)) == 1
    assert not (ROOT / "nothing-here").exists()
    (cmd,) = pip_installs(bad)
    assert "-c" not in shlex.split(cmd)


# ---- images that start together ---------------------------------------------------------------

#: What each pinned onnxruntime-gpu is built for: (CUDA major, cuDNN major), as its PyPI metadata
#: declares them (extras cuda/cudnn: nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0 for
#: 1.31.1). Bumping onnxruntime-gpu in constraints.txt means reading its metadata and adding it.
ORT_GPU_BUILT_FOR = {"1.31.1": (13, 9)}
#: NVIDIA wheels whose major version is the CUDA major.
CUDA_MAJOR_WHEELS = ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink")


def constraints() -> dict[str, str]:
    """name -> pinned version from constraints.txt (== pins only)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def base_images(path: Path) -> list[str]:
    args = build_args(path)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0][1].split()[0])
            for stage in stages(path)]


def test_both_images_run_the_same_python():
    """Ray refuses a worker whose Python differs from the head's (to the patch level by default):
    every stage of both images starts from one Python image pinned to a patch release, and the
    GPU image installs no other Python."""
    images = {flavor: set(base_images(p)) for flavor, p in DOCKERFILES.items()}
    assert all(len(v) == 1 for v in images.values()), images
    (cpu,), (gpu,) = images["cpu"], images["gpu"]
    assert cpu == gpu, f"CPU image on {cpu}, GPU image on {gpu}: Ray needs one Python"
    m = re.search(r"/python:(\d+)\.(\d+)\.(\d+)-", cpu)
    assert m, f"{cpu}: not an official Python image pinned to a patch release"
    import tomllib

    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ".".join(m.groups()) in SpecifierSet(requires)
    for flavor, path in DOCKERFILES.items():
        for op, args in instructions(path):
            if op == "RUN":
                assert not re.search(r"(apt-get|apt|apk|dnf|yum) install[^&]*\bpython", args), \
                    f"{path.name} installs a second Python: {args}"


def test_ray_is_pinned_once_and_is_kuberays_ray_version():
    import importlib.metadata
    import tomllib

    import yaml
    from packaging.requirements import Requirement

    pins = constraints()
    assert "ray" in pins, "constraints.txt must pin ray (the CPU and GPU images install it)"
    values = yaml.safe_load((ROOT / "helm/optiserve/values.yaml").read_text())
    assert values["rayVersion"] == pins["ray"], (
        f"values.yaml rayVersion {values['rayVersion']} != ray=={pins['ray']} in constraints.txt")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in ("replica", "controller"):
        (ray,) = [Requirement(d) for d in optional[extra] if Requirement(d).name == "ray"]
        assert ray.specifier.contains(pins["ray"]), (extra, ray, pins["ray"])
    # the tests themselves run against the Ray the images ship
    assert importlib.metadata.version("ray") == pins["ray"]
    # both images install through constraints.txt (test_installs_what_the_readme_installs)


def test_gpu_image_has_the_cuda_onnxruntime_gpu_is_built_for():
    import tomllib

    from packaging.requirements import Requirement

    pins = constraints()
    ort = pins.get("onnxruntime-gpu")
    assert ort, "constraints.txt must pin onnxruntime-gpu"
    assert ort in ORT_GPU_BUILT_FOR, (
        f"onnxruntime-gpu=={ort}: record the CUDA/cuDNN majors its PyPI metadata declares in "
        "ORT_GPU_BUILT_FOR")
    cuda, cudnn = ORT_GPU_BUILT_FOR[ort]
    for wheel in CUDA_MAJOR_WHEELS:
        assert wheel in pins, f"constraints.txt must pin {wheel} (CUDA {cuda})"
        assert int(pins[wheel].split(".")[0]) == cuda, (wheel, pins[wheel], cuda)
    cudnn_wheel = f"nvidia-cudnn-cu{cuda}"
    assert cudnn_wheel in pins and int(pins[cudnn_wheel].split(".")[0]) == cudnn, pins
    other = [n for n in pins if re.fullmatch(r"nvidia-.*-cu\d+", n) and n != cudnn_wheel]
    assert not other, f"wheels for another CUDA major pinned: {other}"
    # the GPU image's extra pulls them in: onnxruntime-gpu with its cuda and cudnn extras
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    (req,) = [Requirement(r) for r in optional["serve-gpu"]
              if Requirement(r).name == "onnxruntime-gpu"]
    assert {"cuda", "cudnn"} <= req.extras and req.specifier.contains(ort), req
    # and no CUDA base image with its own CUDA stack underneath
    assert not any("nvidia/cuda" in i for i in base_images(DOCKERFILES["gpu"]))
    text = DOCKERFILES["gpu"].read_text()
    assert "ldconfig" in text and "site-packages/nvidia/*/lib" in text


# ---- the light init image ---------------------------------------------------------------------

INIT = ROOT / "docker/Dockerfile.init"


def base_dependencies() -> set[str]:
    import tomllib

    from packaging.requirements import Requirement

    return {Requirement(d).name for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}


def not_in_init() -> set[str]:
    """Import names of every distribution the extras add: the init image lacks them all."""
    from tests.test_dependencies import declared

    from importlib.metadata import packages_distributions

    extra = set().union(*(d for e, d in declared().items() if e and e != "dev")) - {
        n.lower() for n in base_dependencies()}
    names = {m for m, dists in packages_distributions().items()
             if {d.lower().replace("_", "-") for d in dists} & extra}
    return {n for n in names if n.isidentifier() and not n.startswith("_")}


_BLOCKING_RUN = r'''
import builtins, sys
blocked = set(sys.argv[1].split(","))
real = builtins.__import__
def guarded(name, *a, **k):
    if name.split(".")[0] in blocked:
        raise ImportError(f"{name} is not in the init image")
    return real(name, *a, **k)
builtins.__import__ = guarded
sys.argv = ["optiserve", *sys.argv[2:]]
from optiserve.cli.main import main
main()
'''


def test_init_image_installs_only_the_cli():
    (cmd,) = pip_installs(INIT)
    assert extras(cmd) == set() and "." in shlex.split(cmd)
    # the base dependencies are the CLI's and the repository's only
    assert base_dependencies() == {"pydantic", "pydantic-settings", "typer", "rich", "pyyaml"}
    assert set(base_images(INIT)) == set(base_images(DOCKERFILES["cpu"]))
    final = stages(INIT)[-1]
    assert [a for op, a in final if op == "USER"][-1].split(":")[0] == "10001"
    # the chart's verify-models step runs this image
    values = (ROOT / "helm/optiserve/values.yaml").read_text()
    assert "initImage:" in values and "-t optiserve:0.1.0-init" in INIT.read_text()


def test_repo_verify_runs_without_what_the_init_image_lacks(tmp_path):
    """`optiserve repo verify` on a published repository, with every dependency the init image
    does not install made unimportable: it passes, and fails on a tampered artifact."""
    import subprocess
    import sys

    from serving.repository import ModelRepository
    from tests.serving.test_repository import publish

    repo = ModelRepository(tmp_path / "repo")
    publish(repo, b"weights")
    blocked = ",".join(sorted(not_in_init()))
    assert {"numpy", "ray", "torch", "onnxruntime", "kubernetes"} <= not_in_init()

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _BLOCKING_RUN, blocked, "repo", "verify",
                               "--repository", str(tmp_path / "repo")],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "repo/toy/1/model.onnx").write_bytes(b"tampered")
    bad = verify()
    assert bad.returncode != 0 and "not in the init image" not in bad.stderr, bad.stderr
    # and the guard is live: a blocked module cannot be imported
    r = subprocess.run([sys.executable, "-c", _BLOCKING_RUN.replace(
        "from optiserve.cli.main import main\nmain()", "import numpy"), "numpy"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not in the init image" in r.stderr
