"""The demo that `./dev demo` runs works and reports what it claims."""

from __future__ import annotations

from pathlib import Path

from tests.child import run_python

DEMO = Path(__file__).resolve().parent.parent / "examples" / "primitives_demo.py"


def test_demo_runs() -> None:
    done = run_python(str(DEMO), timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "a forged token is refused: malformed deferred token" in out
    assert "300 shards over 3 runners: {'runner1:34431': 100, 'runner2:34431': 100" in out
    assert "'runner4:34431': 75}" in out
    assert "strictly increasing: True" in out
    assert "TimerService woke the event loop for timers [2, 3, 1]" in out
