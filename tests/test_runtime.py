"""The Rust runtime bridge: Rust futures awaited from asyncio, and Rust panics contained."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

import plait
from plait import _native


async def test_many_concurrent_rust_awaits() -> None:
    timers = plait.TimerService()
    now = plait.wall_clock_ms()
    timers.schedule_many([(n, now + 20) for n in range(1_000)])
    waits = [asyncio.ensure_future(_native_wait(timers)) for _ in range(50)]
    await asyncio.gather(*waits)
    assert len(await timers.poll(max_timers=5_000)) == 1_000


async def _native_wait(timers: plait.TimerService) -> None:
    await timers._ref.wait_due()


def test_event_loops_in_threads() -> None:
    results: list[list[int]] = []

    def worker(n: int) -> None:
        timers = plait.TimerService()
        timers.schedule(n, plait.wall_clock_ms() + 10)
        results.append(asyncio.run(timers.poll()))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [[0], [1], [2], [3]]


def test_a_panic_is_an_exception_not_an_abort() -> None:
    with pytest.raises(BaseException, match="boom in rust") as caught:
        _native._panic("boom in rust")
    assert type(caught.value).__name__ == "PanicException"
    # The interpreter and the module carry on.
    assert plait.shard_id("entity-1") == 231


async def test_a_panic_in_a_future_is_an_exception() -> None:
    with pytest.raises(BaseException, match="boom in a future") as caught:
        await _native._panic_async("boom in a future")
    assert type(caught.value).__name__ == "PanicException"
    await _native._panic_async("")  # the runtime still runs futures


def test_a_panic_does_not_kill_the_process() -> None:
    code = (
        "from plait import _native\n"
        "try:\n"
        "    _native._panic('x')\n"
        "except BaseException as e:\n"
        "    print('survived', type(e).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "survived PanicException"
