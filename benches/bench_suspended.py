"""Smoke test of `suspended.py`: a small run on each backend, checking what it measures. The
measurement itself: `.venv/bin/python -m benches.suspended`."""

from __future__ import annotations

import pytest

from benches import suspended
from benches.compare_dbos import postgres_missing


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("wait", ["clock", "deferred"])
def test_suspended_smoke(backend: str, wait: suspended.Wait) -> None:
    if backend == "postgres" and (reason := postgres_missing()):
        pytest.skip(reason)
    outcome = suspended.run(backend, wait, 300)
    # `run` checks that every execution finished after the restart, or raises.
    assert outcome.count == 300
    assert [n for n, _, _ in outcome.samples] == [300]
    assert outcome.resumed_per_second > 0
    assert outcome.objects_per_suspended == 0.0  # one sample: no slope
    assert "| 300 |" in suspended.report([outcome])
