"""Smoke test of `durable_queue.py`: a small run on each backend, checking what it measures.
The measurement itself: `.venv/bin/python -m benches.durable_queue`."""

from __future__ import annotations

import pytest

from benches import durable_queue
from benches.compare_dbos import postgres_missing


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_durable_queue_smoke(backend: str) -> None:
    if backend == "postgres" and (reason := postgres_missing()):
        pytest.skip(reason)
    outcomes = durable_queue.run(backend, 50, 8)
    # `run` checks every workflow's result, or raises.
    assert [(o.shape, o.count) for o in outcomes] == [("enqueue", 50), ("workflows", 50)]
    assert all(o.per_second > 0 for o in outcomes)
    assert durable_queue.report(outcomes).count("\n") == 3
