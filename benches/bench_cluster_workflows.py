"""Smoke test of `cluster_workflows.py`: a small run of plait's side on 1 and 2 runner processes
on the real PostgreSQL, checking that every workflow completed once. The benchmark itself, with
Effect and DBOS beside it: `.venv/bin/python -m benches.cluster_workflows --effect --dbos`
(not run here: it installs the peers and takes minutes)."""

from __future__ import annotations

import pytest

from benches import cluster_workflows
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing

WORKFLOWS = 60


@pytest.mark.parametrize("runners", [1, 2])
def test_every_workflow_completes_once(runners: int) -> None:
    if reason := postgres_missing():
        pytest.skip(reason)
    # Ports of their own (the benchmark's are from 4950), so a benchmark run alongside is spared.
    measured = cluster_workflows.run(POSTGRES_ADMIN, runners, WORKFLOWS, 4990, in_flight=20)
    # run() checks each result ((n+1)*2-1) and that the runners got one per workflow; the
    # database holds each execution once, complete, with its three activity results.
    assert measured.requests == WORKFLOWS
    assert measured.statuses == {"complete": WORKFLOWS}
    assert measured.journal_rows == 3 * WORKFLOWS
    assert measured.seconds > 0
