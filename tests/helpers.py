"""Helpers shared by the tests (import as `from helpers import ...`; tests/ is on pytest's path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: str | Path | None = None, pythonpath: list[str | Path] = (),
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`pibench ARGS...` in a fresh process of this Python (party processes inherit its PYTHONPATH)."""
    env = dict(os.environ)
    paths = [str(p) for p in pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "pibench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
