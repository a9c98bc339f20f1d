"""Packages the test suite installs itself (scripts/test.sh installs every extra it tests).

A test module that needs one imports it through :func:`require`: when it is missing the module
fails to collect with the install command, so a run without the extra is red, never quietly
green with the module skipped.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported; a collection failure naming the extra that provides it when it
    cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not importable ({type(e).__name__}: {e}); it comes with the "
                    f"'{extra}' extra, which scripts/test.sh installs: "
                    f"pip install -c constraints.txt -e '.[{extra}]'", pytrace=False)
