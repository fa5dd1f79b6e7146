"""Smoke test of `compare_dbos.py`: a tiny run of every workload on each system and backend,
checking the results. The comparison itself: `.venv/bin/python -m benches.compare_dbos`."""

from __future__ import annotations

import pytest

from benches import compare_dbos
from benches.compare_dbos import Backend, System, Workload

PLAN = [
    (Workload("three", 0), 5),
    (Workload("three", 10), 20),  # two batches of 10
    (Workload("none", 0), 5),
    (Workload("none", 10), 10),
    (Workload("ten", 0), 2),
    (Workload("ten", 5), 5),
]

CELLS: list[tuple[System, Backend]] = [
    ("plait", "memory"),
    ("plait", "sqlite"),
    ("plait", "postgres"),
    ("DBOS", "sqlite"),
    ("DBOS", "postgres"),
]


@pytest.mark.parametrize(("system", "backend"), CELLS, ids=[f"{s}-{b}" for s, b in CELLS])
def test_compare_dbos_smoke(system: System, backend: Backend) -> None:
    if system == "DBOS":
        pytest.importorskip("dbos", reason="DBOS is a benchmark-only dependency")
    elif backend != "memory" and (reason := compare_dbos.plait_sql_missing()):
        pytest.skip(reason)
    if backend == "postgres" and (reason := compare_dbos.postgres_missing()):
        pytest.skip(reason)
    results = compare_dbos.run_session(system, backend, PLAN, warmup=1)
    # run_session checks every result is (x+1)*2-1 (x+10 for ten steps) or raises.
    assert [(r.workload, r.count, len(r.latencies)) for r in results] == [
        (workload, count, count) for workload, count in PLAN
    ]
    assert all(r.per_second > 0 for r in results)
    assert compare_dbos.expected("three", 4) == 9
    assert compare_dbos.expected("ten", 4) == 14
    table = compare_dbos.table(results)
    assert table.count("\n") == len(PLAN) + 1
