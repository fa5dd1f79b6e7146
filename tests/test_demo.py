"""The demo that `./dev demo` runs works and reports what it claims."""

from __future__ import annotations

import re
from pathlib import Path

from tests.child import run_python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO = EXAMPLES / "primitives_demo.py"


def test_demo_runs() -> None:
    done = run_python(str(DEMO), timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "a forged token is refused: malformed deferred token" in out
    assert "300 shards over 3 runners: {'runner1:34431': 100, 'runner2:34431': 100" in out
    assert "'runner4:34431': 75}" in out
    assert "strictly increasing: True" in out
    assert "TimerService woke the event loop for timers [2, 3, 1]" in out


def test_workflow_demo_runs() -> None:
    done = run_python(str(EXAMPLES / "workflow_demo.py"), timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "@channel from ada notified 1 member(s)" in out
    assert "steps ran {'GetChannelMembers': 1, 'CreateNotifications': 1}" in out
    assert "Complete(exit=Success(value=1))" in out
    assert "a bad payload starts nothing: 3 missing fields" in out
    assert "compensations ran: ['50 seats']" in out
    assert "after an hour both are suspended: Suspended(cause=None)" in out
    assert "inv-1 after the webhook: 'accepted by eve'" in out
    assert "inv-2 after seven virtual days: 'expired'" in out
    assert "killed after pages [1, 2]" in out
    # Page 2 runs again only if the kill landed between its side effect and its commit.
    resumed = re.search(r"resumed it: pages \[(2, )?3, 4, 5\], 500 messages imported", out)
    assert resumed
    twice = "[2]" if resumed.group(1) else "[]"
    assert f"pages done twice: {twice}" in out


def test_entity_demo_runs() -> None:
    done = run_python(str(EXAMPLES / "entity_demo.py"), timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for channel in ("general", "random", "design"):
        for n in range(3):
            assert f"#{channel} {channel}-{n} -> {n + 1}" in out
    assert "retried general-0 -> 1 (same number)" in out
    assert "after the restart: #general general-after -> 4" in out
    assert "last=4 by_author={'ada': 2, 'grace': 2}" in out
