"""The layout's rules, read from the source: imports flow one way (the command line and its
tools → the optimizer → what replicas run), test helpers never ship, benchmarks stand alone."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: a package may import only the packages after it: optiserve → optimizers → serving
ORDER = ("optiserve", "optimizers", "serving")
PROJECT = {*ORDER, "tests", "benchmarks"}


def modules(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative imports resolved, including
    imports inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from pkg import module` names modules too
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return out


def back_imports(top: str) -> list[str]:
    allowed = set(ORDER[ORDER.index(top):]) if top in ORDER else set(ORDER) | {"tests"}
    bad = []
    for path in modules(top):
        for line, name in imported(path):
            head = name.split(".")[0]
            if head in PROJECT and head not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("top", ORDER)
def test_imports_flow_one_way(top):
    """serving (what replicas run) imports neither the optimizer nor the command line; the
    optimizer does not import the command line; none of them imports tests or benchmarks.
    (test_the_check_sees_an_import_that_runs_back shows the check fails on one.)"""
    assert back_imports(top) == []


def test_the_check_sees_an_import_that_runs_back(tmp_path, monkeypatch):
    """The rule above is not vacuous: a module of serving importing the command line, directly,
    relatively from a function or as `from optiserve import x`, is caught."""
    pkg = tmp_path / "serving"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from optiserve.cli import main\n")
    (pkg / "worse.py").write_text("from optimizers import optimize\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("from optiserve import local\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = back_imports("serving")
    assert any("bad.py:2 imports optiserve.cli" in b for b in found), found
    assert any("worse.py:1 imports optimizers" in b for b in found), found
    assert any("sub/__init__.py:1 imports optiserve.local" in b for b in found), found


def test_benchmarks_import_the_package_and_tests_support_only():
    """Benchmarks run as `python -m benchmarks.NAME` from the root: they import the packages
    and tests.support, never another benchmark, and put nothing on sys.path."""
    bad = []
    for path in modules("benchmarks"):
        text = path.read_text()
        if "sys.path" in text:
            bad.append(f"{path.name}: touches sys.path")
        for line, name in imported(path):
            if name.startswith("benchmarks") or (name.startswith("tests")
                                                 and not name.startswith("tests.support")):
                bad.append(f"{path.name}:{line} imports {name}")
    assert bad == []


def test_test_helpers_do_not_ship():
    """The wheel's packages hold no harness: nothing under serving/optimizers/optiserve starts
    Prometheus or imports the test support package."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    assert not any(p.startswith("tests") for p in find["include"]), find
    for top in ORDER:
        for path in modules(top):
            text = path.read_text()
            assert '"prometheus"' not in text and "'prometheus'" not in text, path
