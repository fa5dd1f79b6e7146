"""Throughput of the primitives from Python: one boundary crossing per batch versus one per item,
and versus the same work in pure Python. Run with `./dev bench`."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest

import plait
from plait.sharding import HashRing, shard_id, shard_ids
from plait.snowflake import SnowflakeGenerator
from plait.timers import TimerService, TimerWheel
from tests import effect_reference

N = 10_000
CHANNELS = [f"channel-{n}" for n in range(N)]
ORDERS = [f"order-{n}" for n in range(N)]
TIMERS = [(n, (n * 2_654_435_761) % 86_400_000 + 1) for n in range(100_000)]


@pytest.mark.benchmark(group="shard ids of 10k entity ids")
def test_shard_ids_batch(benchmark: Any) -> None:
    assert benchmark(shard_ids, CHANNELS) == [shard_id(c) for c in CHANNELS]


@pytest.mark.benchmark(group="shard ids of 10k entity ids")
def test_shard_id_per_item(benchmark: Any) -> None:
    benchmark(lambda: [shard_id(c) for c in CHANNELS])


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
    generator = SnowflakeGenerator(7)
    benchmark(generator.next_ids, N)


@pytest.mark.benchmark(group="10k snowflake ids")
def test_snowflakes_per_item(benchmark: Any) -> None:
    generator = SnowflakeGenerator(7)
    benchmark(lambda: [generator.next_id() for _ in range(N)])


@pytest.mark.benchmark(group="300 shards over 3 runners")
def test_ring_assignment(benchmark: Any) -> None:
    ring = HashRing()
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
    wheel = TimerWheel(now_ms=0)
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


async def _bridge_sequential(count: int) -> None:
    timers = TimerService()
    for n in range(count):
        timers.schedule(n, 0)
        assert await timers.poll() == [n]


async def _asyncio_sequential(count: int) -> None:
    """The floor: a round trip to another thread and back through call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    requests: queue.SimpleQueue[asyncio.Future[int] | None] = queue.SimpleQueue()

    def worker() -> None:
        while (future := requests.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, 1)

    thread = threading.Thread(target=worker)
    thread.start()
    for _ in range(count):
        future: asyncio.Future[int] = loop.create_future()
        requests.put(future)
        assert await future == 1
    requests.put(None)
    thread.join()


async def _bridge_concurrent(count: int) -> None:
    timers = TimerService()
    timers.schedule_many([(n, 0) for n in range(count)])
    got = await asyncio.gather(*(timers.poll(max_timers=1) for _ in range(count)))
    assert len(got) == count


async def _asyncio_concurrent(count: int) -> None:
    """The floor: tasks awaiting futures that another thread resolves in one callback."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(count)]

    async def one(future: asyncio.Future[int]) -> int:
        return await future

    def resolve_all() -> None:
        for future in futures:
            future.set_result(1)

    tasks = [asyncio.ensure_future(one(f)) for f in futures]
    threading.Thread(target=lambda: loop.call_soon_threadsafe(resolve_all)).start()
    assert len(await asyncio.gather(*tasks)) == count


@pytest.mark.benchmark(group="1000 sequential awaits of work on another thread")
def test_await_rust_task_sequential(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_bridge_sequential(1000)))


@pytest.mark.benchmark(group="1000 sequential awaits of work on another thread")
def test_await_thread_round_trip_sequential(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_asyncio_sequential(1000)))


@pytest.mark.benchmark(group="10k concurrent awaits of work on another thread")
def test_await_rust_tasks_concurrent(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_bridge_concurrent(10_000)))


@pytest.mark.benchmark(group="10k concurrent awaits of work on another thread")
def test_await_asyncio_futures_concurrent(benchmark: Any) -> None:
    benchmark(lambda: asyncio.run(_asyncio_concurrent(10_000)))


MEMORY_PROBE = """
import os, sys
from plait.timers import TimerWheel

def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

n = int(sys.argv[1])
year_ms = 365 * 86_400_000
timers = [(i, (i * 2_654_435_761) % year_ms + 1) for i in range(n)]
before = rss()
wheel = TimerWheel(now_ms=0)
for start in range(0, n, 100_000):
    wheel.insert_many(timers[start : start + 100_000])
assert len(wheel) == n
print((rss() - before) / n)
"""


@pytest.mark.benchmark(group="2M pending timers: insert and memory")
def test_timer_wheel_memory(benchmark: Any) -> None:
    count = 2_000_000

    def probe() -> float:
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(count)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return float(done.stdout)

    bytes_per_timer = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info["bytes per pending timer"] = round(bytes_per_timer, 1)
    assert 0 < bytes_per_timer < 1024
