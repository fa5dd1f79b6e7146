from __future__ import annotations

import asyncio
import heapq
import random
import time

import pytest

import plait
from plait.timers import TimerService, TimerWheel, wall_clock_ms

YEAR_MS = 365 * 86_400_000


def test_fires_in_due_order_then_insertion_order() -> None:
    wheel = TimerWheel(now_ms=1_000)
    wheel.insert_many([(1, 1_500), (2, 1_200), (3, 9_000), (4, 1_200), (5, 1_001)])
    assert wheel.next_due() == 1_001
    assert wheel.advance(1_000) == []
    assert wheel.advance(2_000) == [5, 2, 4, 1]
    assert wheel.elapsed_ms == 2_000
    assert len(wheel) == 1
    assert 3 in wheel
    assert wheel.advance(10_000) == [3]


def test_past_due_and_far_future() -> None:
    now = wall_clock_ms()
    wheel = TimerWheel(now_ms=now)
    wheel.insert(1, now - 60_000)
    wheel.insert(2, now + 10 * YEAR_MS)
    wheel.insert(3, 2**64 - 1)
    assert wheel.advance(now) == [1]
    assert wheel.advance(now + 10 * YEAR_MS - 1) == []
    assert wheel.advance(now + 10 * YEAR_MS) == [2]
    assert wheel.due_of(3) == 2**64 - 1
    assert wheel.advance(2**64 - 1) == [3]


def test_cancel_and_move() -> None:
    wheel = TimerWheel(now_ms=0)
    assert wheel.insert(1, 100) is False
    assert wheel.insert(1, 50) is True
    assert wheel.insert(2, 70) is False
    assert wheel.cancel(2) is True
    assert wheel.cancel(2) is False
    assert wheel.advance(60) == [1]
    assert wheel.next_due() is None


def test_against_a_heap(rng: random.Random) -> None:
    wheel = TimerWheel(now_ms=0)
    heap: list[tuple[int, int, int]] = []  # (due, seq, id); cancelled entries are skipped
    live: dict[int, tuple[int, int]] = {}
    now = seq = 0
    for _ in range(20_000):
        roll = rng.random()
        if roll < 0.55:
            timer_id = rng.randrange(2_000)
            due = now + rng.choice([rng.randrange(-50, 50), rng.randrange(10**6), 10**12])
            if rng.random() < 0.02:
                due = 2**64 - 1 - rng.randrange(100)
            due = min(max(due, 0), 2**64 - 1)
            wheel.insert(timer_id, due)
            live[timer_id] = (due, seq)
            heapq.heappush(heap, (due, seq, timer_id))
            seq += 1
        elif roll < 0.7:
            timer_id = rng.randrange(2_000)
            assert wheel.cancel(timer_id) == (live.pop(timer_id, None) is not None)
        else:
            now += rng.choice([0, 1, 63, 64, 4096, rng.randrange(10**6)])
            expected = []
            while heap and heap[0][0] <= now:
                due, s, timer_id = heapq.heappop(heap)
                if live.get(timer_id) == (due, s):
                    del live[timer_id]
                    expected.append(timer_id)
            assert wheel.advance(now) == expected
        assert len(wheel) == len(live)
        assert wheel.next_due() == min((due for due, _ in live.values()), default=None)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_bad_ids_and_instants_are_named(bad: int) -> None:
    wheel = TimerWheel(now_ms=0)
    with pytest.raises(plait.InvalidArgumentError, match=str(bad)):
        wheel.insert(bad, 10)
    with pytest.raises(plait.InvalidArgumentError, match=str(bad)):
        wheel.insert(1, bad)
    with pytest.raises(plait.InvalidArgumentError, match=str(bad)):
        wheel.insert_many([(1, 1), (2, bad)])
    with pytest.raises(TypeError):
        wheel.insert_many([(1, "soon")])  # type: ignore[list-item]


async def test_service_wakes_the_loop_in_due_order() -> None:
    timers = TimerService()
    now = wall_clock_ms()
    timers.schedule_many([(1, now + 120), (2, now + 40), (3, now + 80)])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    fired: list[int] = []
    started = time.monotonic()
    while len(fired) < 3:
        fired += await timers.poll()
    waited = time.monotonic() - started
    tick_task.cancel()
    assert fired == [2, 3, 1]
    assert waited >= 0.1
    # The loop kept running while the service waited in Rust.
    assert ticks >= 10
    assert wall_clock_ms() >= now + 120


async def test_an_earlier_timer_wakes_a_waiting_poll() -> None:
    timers = TimerService()
    timers.schedule(1, wall_clock_ms() + 600_000)
    poll = asyncio.create_task(timers.poll())
    await asyncio.sleep(0.02)
    timers.schedule(2, wall_clock_ms() + 10)
    assert await asyncio.wait_for(poll, timeout=5) == [2]
    assert len(timers) == 1


async def test_poll_batches_respect_max() -> None:
    timers = TimerService()
    past = wall_clock_ms() - 1_000
    timers.schedule_many([(n, past + n) for n in range(10)])
    assert await timers.poll(max_timers=4) == [0, 1, 2, 3]
    assert timers.cancel(4) is True
    assert await timers.poll() == [5, 6, 7, 8, 9]


async def test_cancelled_poll_loses_no_timer() -> None:
    timers = TimerService()
    timers.schedule(1, 0)  # due now
    poll = asyncio.ensure_future(timers.poll())
    await asyncio.sleep(0)  # the poll starts its wait in Rust
    # Block the loop so the wait finishes in Rust and its result sits undelivered, then
    # cancel the poll before the loop can hand the result over.
    time.sleep(0.05)  # noqa: ASYNC251 (blocking the loop is the point)
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    assert len(timers) == 1
    assert await asyncio.wait_for(timers.poll(), timeout=5) == [1]


async def test_batches_come_earliest_first_across_polls() -> None:
    timers = TimerService()
    now = wall_clock_ms()
    timers.schedule_many([(1, now - 1_000), (2, now - 900), (3, now - 800)])
    assert await timers.poll(max_timers=1) == [1]
    timers.schedule(4, now - 10_000)  # due before the leftovers
    assert await timers.poll() == [4, 2, 3]


async def test_close_wakes_waiters_with_closed_error() -> None:
    timers = TimerService()
    waiter = asyncio.create_task(timers.poll())
    await asyncio.sleep(0.01)
    timers.close()
    with pytest.raises(plait.ClosedError):
        await asyncio.wait_for(waiter, timeout=5)
    with pytest.raises(plait.ClosedError):
        await timers.poll()


def test_service_works_across_event_loops() -> None:
    timers = TimerService()
    for n in range(3):
        timers.schedule(n, wall_clock_ms() + 5)
        assert asyncio.run(timers.poll()) == [n]
