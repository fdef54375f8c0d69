"""The import layers, declared as import-linter contracts in pyproject.toml: the contracts hold, and
they fail, naming the import, when a library module imports an entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from robust_ensembles import PROJECT_ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_hold():
    out = lint(PROJECT_ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_a_library_module_importing_an_entry_point_breaks_a_contract(tmp_path):
    shutil.copytree(PROJECT_ROOT / "robust_ensembles", tmp_path / "robust_ensembles",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    store = tmp_path / "robust_ensembles" / "store" / "__init__.py"
    store.write_text(store.read_text() + "\n\ndef _later():\n    from robust_ensembles.train import train\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "Entry points sit on top" in out.stdout and "BROKEN" in out.stdout
    assert "robust_ensembles.store -> robust_ensembles.train" in out.stdout
