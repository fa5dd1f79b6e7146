"""Smoke test of `journal_growth.py`: a tiny fill and measurement on each backend. The
measurement itself: `.venv/bin/python -m benches.journal_growth`."""

from __future__ import annotations

import asyncio

import pytest

from benches import journal_growth
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing
from benches.databases import database


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_journal_growth_smoke(backend: str) -> None:
    if backend == "postgres" and (reason := postgres_missing()):
        pytest.skip(reason)
    with database(backend, POSTGRES_ADMIN) as url:
        points = asyncio.run(journal_growth.grow(url, rows=30_000, rounds=1, per_round=100))
    # Checkpoints of 0, 3,000, 10,000 and 30,000 rows: the fill tops up what the rounds stored
    # (a warm-up of 1,000 and 100 workflows, 3 steps each) in whole executions, to at least
    # the checkpoint.
    assert [p.rows for p in points] == [0, 3_300, 10_002, 30_000]
    assert all(len(p.rates) == 1 and p.median > 0 for p in points)
