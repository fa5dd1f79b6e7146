"""Entities with pytest-benchmark: the counter of `entities.py`, volatile RPCs in process (1,000
in flight and one at a time, next to the same loop over a plain async function) and persisted
RPCs on a SQLite file and PostgreSQL; and smoke tests of `entities.py`'s plait side, its
report and how a peer that cannot be installed shows. The comparison with Effect and Restate:
`.venv/bin/python -m benches.entities` (not run here: it installs the peers and takes minutes)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plait
from benches import entities, entity_peers
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing
from benches.entities import Call, Row, Sizes

IN_FLIGHT = 1_000
BATCH = 2_000
ENTITIES = 1_000  # each round reuses the same instances: the resident cap is never reached
SEQUENTIAL = 200
TINY = Sizes(entities=50, in_flight=10, persisted=100, volatile=200, sequential=10, idle=100)
_rounds = itertools.count()


@pytest.fixture
def memory_engine() -> Iterator[tuple[asyncio.AbstractEventLoop, plait.Engine]]:
    loop = asyncio.new_event_loop()
    engine = plait.Engine.memory()
    loop.run_until_complete(engine.start())
    yield loop, engine
    loop.run_until_complete(engine.close())
    loop.close()


_plain_counts: dict[str, int] = defaultdict(int)


async def _plain_counter(entity_id: str, key: str) -> int:
    """The counter as a plain async function: what the harness costs without plait."""
    _plain_counts[entity_id] += 1
    return _plain_counts[entity_id]


def _batch(loop: asyncio.AbstractEventLoop, call: Call, prefix: str) -> Callable[[], object]:
    # The same entity ids every round: the instances stay resident between rounds.
    return lambda: loop.run_until_complete(
        entities.in_flight(call, prefix, BATCH, ENTITIES, IN_FLIGHT)
    )


GROUP = f"{BATCH:,} RPCs, {IN_FLIGHT:,} in flight over {ENTITIES:,} entities, in process"


@pytest.mark.benchmark(group=GROUP)
def test_volatile_rpcs_in_flight(benchmark: Any, memory_engine: Any) -> None:
    loop, engine = memory_engine
    benchmark.pedantic(
        _batch(loop, entities._volatile_call(engine), "v"), rounds=8, warmup_rounds=1
    )
    if benchmark.stats is not None:
        benchmark.extra_info["volatile RPCs/s"] = round(BATCH / benchmark.stats.stats.mean)


@pytest.mark.benchmark(group=GROUP)
def test_plain_async_calls_in_flight(benchmark: Any, memory_engine: Any) -> None:
    loop, _ = memory_engine
    benchmark.pedantic(_batch(loop, _plain_counter, "p"), rounds=8, warmup_rounds=1)


@pytest.mark.benchmark(group=f"{SEQUENTIAL} RPCs one at a time to one instance, in process")
def test_volatile_rpc_one_at_a_time(benchmark: Any, memory_engine: Any) -> None:
    loop, engine = memory_engine
    call = entities._volatile_call(engine)
    benchmark.pedantic(
        lambda: loop.run_until_complete(entities.sequential(call, "s", SEQUENTIAL)),
        rounds=8,
        warmup_rounds=1,
    )
    if benchmark.stats is not None:
        mean_ms = benchmark.stats.stats.mean / SEQUENTIAL * 1e3
        benchmark.extra_info["ms per volatile RPC"] = round(mean_ms, 4)


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def persisted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Call]]:
    """A loop and the persisted RPC on a fresh engine of each backend."""
    backend: str = request.param
    if backend == "postgres" and (reason := postgres_missing()):
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            engine = plait.Engine.sqlite(tmp_path / "plait.db")
        else:
            engine = plait.Engine.postgres(
                stack.enter_context(entities.fresh_postgres(POSTGRES_ADMIN, "bench"))
            )
        loop = asyncio.new_event_loop()
        loop.run_until_complete(engine.start())
        call = entities._persisted_call(engine)
        loop.run_until_complete(call("probe", uuid.uuid4().hex))
        try:
            yield loop, call
        finally:
            loop.run_until_complete(engine.close())
            loop.close()


@pytest.mark.benchmark(group="persisted RPCs, 500 with 100 in flight over 100 entities")
def test_persisted_rpcs_in_flight(persisted: Any, benchmark: Any) -> None:
    loop, call = persisted

    def run() -> None:
        prefix = f"p{next(_rounds)}"
        loop.run_until_complete(entities.in_flight(call, prefix, 500, 100, 100))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info["persisted RPCs/s"] = round(500 / benchmark.stats.stats.mean)


# Smoke tests of the comparison's plait side and report ------------------------------------------


def test_the_plait_rows_are_measured_and_checked() -> None:
    volatile = entities.plait_volatile(TINY)
    assert [(r.workload, r.count, len(r.latencies_ms)) for r in volatile] == [
        ("volatile-sequential", 10, 10),
        ("volatile-in-flight", 200, 200),
    ]
    assert all(r.per_second > 0 and r.error is None for r in volatile)
    for backend in BACKENDS:
        if backend == "postgres" and postgres_missing():
            continue
        persisted = entities.plait_persisted(backend, TINY, POSTGRES_ADMIN)
        assert [r.workload for r in persisted] == entities.PERSISTED
        for row in persisted:
            assert row.error is None, row.error
            assert row.missing is None
            assert row.count == len(row.latencies_ms) > 0


def test_the_idle_instances_are_measured_in_a_fresh_process() -> None:
    row = entities.plait_idle(TINY)
    assert row.error is None, row.error
    assert row.memory["Python objects"] >= 1, "each idle instance holds at least its object"
    assert row.memory["tracemalloc B"] > 0


def test_a_check_refuses_a_count_seen_twice() -> None:
    entities.check("fine", {"a": [3, 1, 2], "b": [7]})
    with pytest.raises(AssertionError, match="entity a replied"):
        entities.check("broken", {"a": [1, 2, 2]})


def test_the_table_compares_each_peer_with_plaits_row() -> None:
    plait_pg = Row("plait", "PostgreSQL", "persisted-in-flight", 10_000, 1.0, [5.0, 7.0])
    effect = Row("Effect", entities.EFFECT_STORAGE, "persisted-in-flight", 500, 1.0, [900.0])
    one = Row("plait", "PostgreSQL", "persisted-sequential", 10, 1.0, [1.0, 1.0, 3.0])
    slow = Row("Restate", entities.RESTATE_STORAGE, "persisted-sequential", 10, 1.0, [5.0] * 3)
    gone = Row("Restate", "—", "volatile-in-flight", missing="it has none")
    rows = [plait_pg, effect, one, slow, gone]
    assert entities.advantage(rows, effect) == "20.0x"  # 10,000/s over 500/s
    assert entities.advantage(rows, slow) == "5.0x"  # p50 5 ms over 1 ms
    assert entities.advantage(rows, gone) == ""
    text = entities.table(rows, TINY)
    assert text.count("\n") == len(rows) + 1
    assert "not measured: it has none" in text
    assert any("≥ 20x Effect: 20.0x (met)" in line for line in entities.targets(rows))


def test_a_peer_that_cannot_be_installed_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    with pytest.raises(entity_peers.PeerUnavailable, match="node and npm are not installed"):
        entity_peers.install_effect(tmp_path / "peers")
    with pytest.raises(entity_peers.PeerUnavailable, match="node and npm are not installed"):
        entity_peers.install_restate(tmp_path / "peers")
    assert not (tmp_path / "peers" / "effect" / "node_modules").exists()
