"""The layers contract ([tool.importlinter] in pyproject.toml): it holds, and it catches an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra: make install")
pytestmark = pytest.mark.integration  # each test runs lint-imports in a process of its own

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_package_keeps_its_layers():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, source, edge", [
    # the MPC layer reading model folders (the edge party.py had)
    ("pibench/mpc/upward.py", "from pibench.modelfolder import spec\n", "pibench.mpc.upward -> pibench.modelfolder.spec"),
    # a linearization method importing the sweep config (the config <-> linearize cycle)
    ("pibench/linearize/upward.py", "from pibench.sweep import config\n",
     "pibench.linearize.upward -> pibench.sweep.config"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, source, edge):
    shutil.copytree(ROOT / "pibench", tmp_path / "pibench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / module).write_text(source)
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 broken" in out.stdout and edge in out.stdout
