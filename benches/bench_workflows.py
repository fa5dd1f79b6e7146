"""Workflows on the memory engine: the three-activity workflow (x+1, x*2, x-1), 1,000 in
flight and one after another, on asyncio's default loop and on uvloop, next to the same three
steps as plain async calls. Run with `./dev bench`."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

import plait

# The comparison's steps: one function holds an activity's name in a process.
from benches.compare_dbos import add_one, double, subtract_one

IN_FLIGHT = 1_000
_fresh = itertools.count()


@plait.workflow(name="BenchThreeSteps", idempotency_key=lambda p: str(p.x))
async def three_steps(x: int) -> int:
    return await subtract_one(await double(await add_one(x)))


async def plain_three_steps(x: int) -> int:
    async def add(v: int) -> int:
        return v + 1

    async def mul(v: int) -> int:
        return v * 2

    async def sub(v: int) -> int:
        return v - 1

    return await sub(await mul(await add(x)))


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def engine_loop(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[asyncio.AbstractEventLoop, plait.Engine]]:
    loop = LOOPS[request.param]()
    engine = plait.Engine.memory()
    loop.run_until_complete(engine.start())
    yield loop, engine
    loop.run_until_complete(engine.close())
    loop.close()


def _in_flight(
    loop: asyncio.AbstractEventLoop, run: Callable[[int], Awaitable[int]]
) -> Callable[[], None]:
    async def batch() -> None:
        xs = [next(_fresh) for _ in range(IN_FLIGHT)]
        results = await asyncio.gather(*(run(x) for x in xs))
        assert results == [(x + 1) * 2 - 1 for x in xs]

    return lambda: loop.run_until_complete(batch())


@pytest.mark.benchmark(group="3-activity workflows, 1,000 in flight")
def test_memory_engine_in_flight(benchmark: Any, engine_loop: Any) -> None:
    loop, engine = engine_loop
    benchmark.pedantic(
        _in_flight(loop, lambda x: three_steps.execute({"x": x}, engine=engine)),
        rounds=8,
        warmup_rounds=1,
    )
    if benchmark.stats is not None:
        benchmark.extra_info["workflows/s"] = round(IN_FLIGHT / benchmark.stats.stats.mean)


@pytest.mark.benchmark(group="3-activity workflows, 1,000 in flight")
def test_plain_async_in_flight(benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        benchmark.pedantic(_in_flight(loop, plain_three_steps), rounds=8, warmup_rounds=1)
    finally:
        loop.close()


@pytest.mark.benchmark(group="3-activity workflow, one after another")
def test_memory_engine_sequential(benchmark: Any, engine_loop: Any) -> None:
    loop, engine = engine_loop

    def one() -> None:
        loop.run_until_complete(three_steps.execute({"x": next(_fresh)}, engine=engine))

    benchmark(one)

    async def latencies() -> list[float]:
        samples = []
        for _ in range(2_000):
            start = time.perf_counter()
            await three_steps.execute({"x": next(_fresh)}, engine=engine)
            samples.append(time.perf_counter() - start)
        return samples

    if benchmark.stats is not None:
        samples = loop.run_until_complete(latencies())
        cuts = statistics.quantiles(samples, n=100)
        benchmark.extra_info["p50 µs"] = round(cuts[49] * 1e6, 1)
        benchmark.extra_info["p99 µs"] = round(cuts[98] * 1e6, 1)
