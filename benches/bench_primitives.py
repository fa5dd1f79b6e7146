"""Throughput of the primitives from Python: one boundary crossing per batch versus one per item,
and versus the same work in pure Python. Run with `./dev bench`."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from typing import Any

import pytest

import plait
from tests import effect_reference

N = 10_000
CHANNELS = [f"channel-{n}" for n in range(N)]
ORDERS = [f"order-{n}" for n in range(N)]
TIMERS = [(n, (n * 2_654_435_761) % 86_400_000 + 1) for n in range(100_000)]


@pytest.mark.benchmark(group="shard ids of 10k entity ids")
def test_shard_ids_batch(benchmark: Any) -> None:
    assert benchmark(plait.shard_ids, CHANNELS) == [plait.shard_id(c) for c in CHANNELS]


@pytest.mark.benchmark(group="shard ids of 10k entity ids")
def test_shard_id_per_item(benchmark: Any) -> None:
    benchmark(lambda: [plait.shard_id(c) for c in CHANNELS])


@pytest.mark.benchmark(group="shard ids of 10k entity ids")
def test_shard_id_pure_python(benchmark: Any) -> None:
    benchmark(lambda: [effect_reference.shard_id(c) for c in CHANNELS])


@pytest.mark.benchmark(group="execution ids of 10k keys")
def test_execution_ids_batch(benchmark: Any) -> None:
    benchmark(plait.execution_ids, "ProcessOrder", ORDERS)


@pytest.mark.benchmark(group="execution ids of 10k keys")
def test_execution_id_per_item(benchmark: Any) -> None:
    benchmark(lambda: [plait.execution_id("ProcessOrder", o) for o in ORDERS])


@pytest.mark.benchmark(group="execution ids of 10k keys")
def test_execution_id_hashlib(benchmark: Any) -> None:
    benchmark(
        lambda: [hashlib.sha256(f"ProcessOrder-{o}".encode()).digest()[:16].hex() for o in ORDERS]
    )


@pytest.mark.benchmark(group="10k snowflake ids")
def test_snowflakes_batch(benchmark: Any) -> None:
    generator = plait.SnowflakeGenerator(7)
    benchmark(generator.next_ids, N)


@pytest.mark.benchmark(group="10k snowflake ids")
def test_snowflakes_per_item(benchmark: Any) -> None:
    generator = plait.SnowflakeGenerator(7)
    benchmark(lambda: [generator.next_id() for _ in range(N)])


@pytest.mark.benchmark(group="300 shards over 3 runners")
def test_ring_assignment(benchmark: Any) -> None:
    ring = plait.HashRing()
    reference = effect_reference.Ring()
    for runner in ("runner1:34431", "runner2:34431", "runner3:34431"):
        ring.add(runner)
        reference.add(runner)
    assert benchmark(ring.shards, 300) == reference.shards(300)


@pytest.mark.benchmark(group="300 shards over 3 runners")
def test_ring_assignment_pure_python(benchmark: Any) -> None:
    reference = effect_reference.Ring()
    for runner in ("runner1:34431", "runner2:34431", "runner3:34431"):
        reference.add(runner)
    benchmark(reference.shards, 300)


def _wheel_day() -> int:
    wheel = plait.TimerWheel(now_ms=0)
    wheel.insert_many(TIMERS)
    return sum(len(wheel.advance(hour * 3_600_000)) for hour in range(1, 25))


def _heap_day() -> int:
    heap = [(due, n) for n, due in TIMERS]
    heapq.heapify(heap)
    fired = 0
    for hour in range(1, 25):
        while heap and heap[0][0] <= hour * 3_600_000:
            heapq.heappop(heap)
            fired += 1
    return fired


@pytest.mark.benchmark(group="100k timers: insert, then fire hourly over a day")
def test_timer_wheel(benchmark: Any) -> None:
    assert benchmark(_wheel_day) == len(TIMERS)


@pytest.mark.benchmark(group="100k timers: insert, then fire hourly over a day")
def test_timer_heapq(benchmark: Any) -> None:
    assert benchmark(_heap_day) == len(TIMERS)


async def _service_round_trips(count: int) -> None:
    timers = plait.TimerService()
    for n in range(count):
        timers.schedule(n, 0)
        assert await timers.poll() == [n]


async def _asyncio_round_trips(count: int) -> None:
    loop = asyncio.get_running_loop()
    for n in range(count):
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon_threadsafe(future.set_result, n)
        assert await future == n


@pytest.mark.benchmark(group="1000 awaits crossing threads")
def test_await_rust_future(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_service_round_trips(1000)))


@pytest.mark.benchmark(group="1000 awaits crossing threads")
def test_await_asyncio_future(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_asyncio_round_trips(1000)))
