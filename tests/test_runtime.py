"""The Rust runtime bridge: Rust tasks awaited from asyncio, and Rust panics contained."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref

import pytest

import plait
from plait import _bridge, _native
from plait.sharding import shard_id
from plait.timers import TimerService, wall_clock_ms
from tests.child import run_python


async def test_many_concurrent_rust_awaits_resolve() -> None:
    timers = TimerService()
    timers.schedule_many([(n, wall_clock_ms() + 20) for n in range(1_000)])
    waits = [_bridge.call(timers._ref.wait_due) for _ in range(2_000)]
    assert await asyncio.gather(*waits) == [None] * 2_000
    assert len(_bridge.for_running_loop().native) == 0
    assert len(await timers.poll(max_timers=5_000)) == 1_000


async def test_exceptions_from_rust_keep_their_class() -> None:
    timers = TimerService()
    timers.close()
    with pytest.raises(plait.ClosedError, match="closed"):
        await _bridge.call(timers._ref.wait_due)


def test_cancel_aborts_the_rust_task() -> None:
    # A bridge no loop watches, so its results can be looked at directly.
    bridge = _native.AsyncBridge()
    timers = TimerService()
    cancelled = timers._ref.wait_due(bridge)
    kept = timers._ref.wait_due(bridge)
    assert bridge.cancel(cancelled) is True
    assert bridge.cancel(cancelled) is False
    timers.schedule(1, 0)  # would end both waits
    deadline = time.monotonic() + 5
    finished: list[int] = []
    while kept not in finished and time.monotonic() < deadline:
        time.sleep(0.01)
        finished += [token for token, _, _ in bridge.drain()]
    time.sleep(0.05)  # time for a task that was not stopped to finish too
    finished += [token for token, _, _ in bridge.drain()]
    assert finished == [kept]


def test_dropping_a_bridge_stops_its_tasks() -> None:
    timers = TimerService()
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        bridge = _native.AsyncBridge()
        timers._ref.wait_due(bridge)  # never ends: no timer
        del bridge
    gc.collect()
    time.sleep(0.05)  # the aborted tasks release the sockets on the runtime's threads
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


def test_a_loop_closed_with_awaits_pending_leaks_nothing() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        loop = asyncio.new_event_loop()
        loops.append(weakref.ref(loop))
        timers = TimerService()
        pending = loop.create_task(timers.poll())  # never due
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.close()  # without cancelling the pending poll
        del loop, pending, timers
    gc.collect()
    time.sleep(0.05)
    assert all(ref() is None for ref in loops)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


async def test_a_closed_coroutine_stops_its_rust_task() -> None:
    timers = TimerService()
    bridge = _bridge.for_running_loop()
    waiting = bridge.wait(timers._ref.wait_due(bridge.native))
    waiting.send(None)  # runs up to the await
    assert len(bridge.native) == 1
    waiting.close()  # as when an abandoned task is collected
    assert len(bridge.native) == 0


async def test_cancelling_an_await_stops_the_rust_task() -> None:
    timers = TimerService()
    bridge = _bridge.for_running_loop()
    wait = asyncio.ensure_future(bridge.wait(timers._ref.wait_due(bridge.native)))
    await asyncio.sleep(0.01)
    assert len(bridge.native) == 1
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
    assert len(bridge.native) == 0
    # The service is unaffected: a later wait sees a later timer.
    timers.schedule(1, wall_clock_ms())
    assert await asyncio.wait_for(timers.poll(), timeout=5) == [1]


def test_event_loops_in_threads() -> None:
    results: list[list[int]] = []

    def worker(n: int) -> None:
        timers = TimerService()
        timers.schedule(n, wall_clock_ms() + 10)
        results.append(asyncio.run(timers.poll()))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [[0], [1], [2], [3]]


def test_a_finished_loop_is_not_kept_alive() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use_bridge() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        timers = TimerService()
        timers.schedule(1, 0)
        await timers.poll()

    asyncio.run(use_bridge())
    gc.collect()
    assert loops[0]() is None


def test_a_panic_is_an_exception_not_an_abort() -> None:
    with pytest.raises(BaseException, match="boom in rust") as caught:
        _native._panic("boom in rust")
    assert type(caught.value).__name__ == "PanicException"
    # The interpreter and the module carry on.
    assert shard_id("entity-1") == 231


async def test_a_panic_in_a_rust_task_is_an_exception() -> None:
    with pytest.raises(BaseException, match="boom in a task") as caught:
        await _bridge.call(lambda bridge: _native._panic_async(bridge, "boom in a task"))
    assert type(caught.value).__name__ == "PanicException"
    # The runtime still runs tasks.
    assert await _bridge.call(lambda bridge: _native._panic_async(bridge, "")) is None


def test_a_panic_does_not_kill_the_process() -> None:
    code = (
        "from plait import _native\n"
        "try:\n"
        "    _native._panic('x')\n"
        "except BaseException as e:\n"
        "    print('survived', type(e).__name__)\n"
    )
    done = run_python(
        "-c",
        code,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "survived PanicException"


FORK_SCRIPT = """
import asyncio, os
from plait.timers import TimerService, wall_clock_ms

async def one_timer(n):
    timers = TimerService()
    timers.schedule(n, wall_clock_ms() + 10)
    return await timers.poll()

assert asyncio.run(one_timer(1)) == [1]  # the parent's runtime is up before the fork
pid = os.fork()
if pid == 0:
    try:
        os._exit(0 if asyncio.run(asyncio.wait_for(one_timer(2), timeout=10)) == [2] else 1)
    except BaseException:
        os._exit(2)
_, status = os.waitpid(pid, 0)
assert asyncio.run(one_timer(3)) == [3]  # the parent carries on
print("child exit", os.waitstatus_to_exitcode(status))
"""


INHERITED_SCRIPT = """
import asyncio, os
import plait
from plait.snowflake import SnowflakeGenerator
from plait.timers import TimerService

generator = SnowflakeGenerator(3)
timers = TimerService()
timers.schedule(1, 0)
assert asyncio.run(timers.poll()) == [1]
parent_next = generator.next_id()
pid = os.fork()
if pid == 0:
    outcomes = []
    for use in (generator.next_id, lambda: timers.schedule(2, 0), lambda: len(timers)):
        try:
            use()
            outcomes.append("worked")
        except plait.ForkedProcessError:
            outcomes.append("refused")
    fresh = SnowflakeGenerator(4).next_id()
    os._exit(0 if outcomes == ["refused"] * 3 and fresh else 1)
_, status = os.waitpid(pid, 0)
assert generator.next_id() > parent_next  # the parent's objects carry on
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_objects_from_before_a_fork_refuse_to_work_in_the_child() -> None:
    done = run_python(
        "-c",
        INHERITED_SCRIPT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child exit 0"


def test_a_forked_child_runs_rust_tasks_of_its_own() -> None:
    done = run_python(
        "-c",
        FORK_SCRIPT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "child exit 0"
