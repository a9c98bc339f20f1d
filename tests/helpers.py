"""Small helpers shared by tests: run the real CLI, build manifests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 900, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``optiserve`` as a user would, in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "serving.cli.main", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd or ROOT,
    )
