"""Running code in a fresh interpreter: for crashes, forks and whole programs."""

from __future__ import annotations

import subprocess
import sys


def run_python(
    *args: str, timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python *args` with this interpreter; the caller checks exit code and output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
