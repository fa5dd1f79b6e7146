"""Imports run one way: the public API over the engine over the store, with no cycle.

The contracts live in `pyproject.toml` (`[tool.importlinter]`); `lint-imports` checks them on
the package as it is, and the second test shows the check catches an import back up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(python_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(python_dir)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_its_import_contracts() -> None:
    done = lint(ROOT / "python")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 kept, 0 broken" in done.stdout


def test_an_import_back_up_breaks_them(tmp_path: Path) -> None:
    copy = tmp_path / "python"
    shutil.copytree(ROOT / "python", copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    run = copy / "plait" / "engine" / "run.py"
    run.write_text(run.read_text() + "\nfrom plait import workflow  # noqa: E402\n")
    done = lint(copy)
    assert done.returncode != 0
    assert "plait.engine is not allowed to import plait.workflow" in done.stdout
    assert "BROKEN" in done.stdout
