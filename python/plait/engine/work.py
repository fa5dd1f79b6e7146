"""The engine's side of the Rust work source: take its work in batches, run it.

The work source (`_native.WorkSource`) knows what this process owns: it recovers the executions
found running on start, keeps the stored timers due within a minute in its wheel, fires them
(the deferred, the running mark and the timer's removal in one transaction) and reads the
snapshots of what must run again. This module waits on it, takes ready work a batch at a time
and hands each `Resume` to the engine; with a clock other than the system clock (a test's
`VirtualClock`), it also moves the source's time as that clock moves.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import Any

from plait import _bridge
from plait._native import Store, WorkSource
from plait.clocks import Clock, SystemClock

__all__ = ["BATCH", "WorkLoop", "busy"]

#: Work taken from the source at once (it reads no more than 1,000 snapshots ahead anyway).
BATCH = 1_000
_loops: weakref.WeakSet[WorkLoop] = weakref.WeakSet()


def busy() -> bool:
    """Whether any live work source holds work: listing, firing, reading, or ready.

    For tests that wait until an engine has nothing left to do.
    """
    return any(loop.source.busy() for loop in _loops)


class WorkLoop:
    """The tasks that feed an engine from its work source.

    Args:
        store: The engine's store.
        clock: The engine's clock: the system clock lets the source sleep on its own; any other
            is followed by a task that moves the source's time.
        run: Called with each batch of work taken, on the loop.
        shards_per_group: For a runner of a cluster: its source serves the entities and the
            executions of the shards its cluster membership acquires.
        reply_poll_ms: How often a runner reads the replies (and the ends of executions) it
            awaits from other runners.
        scan_ms: How often a runner lists the running executions of the shards it holds
            (what a lost notification missed).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        run: Callable[[list[Any]], None],
        *,
        shards_per_group: int | None = None,
        reply_poll_ms: int = 200,
        scan_ms: int = 10_000,
    ) -> None:
        self._clock = clock
        manual = None if isinstance(clock, SystemClock) else clock.now_ms()
        self.source = WorkSource(store, manual, shards_per_group, reply_poll_ms, scan_ms)
        _loops.add(self)
        self._run = run
        self._changed = asyncio.Event()

    async def started(self) -> None:
        """Waits until the source has listed what to recover and read its first timers."""
        await _bridge.call(self.source.started)

    def tasks(self) -> list[Any]:
        """The coroutines to run as the engine's tasks."""
        work = [self._take()]
        if not isinstance(self._clock, SystemClock):
            work.append(self._follow_clock())
        return work

    def scheduled(self, execution_id: str, name: str, due_ms: int) -> None:
        """A timer was stored: the source may need it in its wheel, and to wake earlier."""
        self.source.scheduled(execution_id, name, due_ms)
        self._changed.set()

    def changed(self) -> None:
        """Something the source's next wake-up depends on changed.

        An entity became resident or idle: a clock other than the system one looks at
        `next_due` again.
        """
        self._changed.set()

    def close(self) -> None:
        """Stops the source; what it did not fire or hand out stays in the store."""
        self.source.close()

    async def _take(self) -> None:
        source = self.source
        while True:
            await _bridge.watch(source.wait)
            self._run(source.take(BATCH))

    async def _follow_clock(self) -> None:
        """Moves the source's time to the engine's clock each time it reaches the next due."""
        clock, source, changed = self._clock, self.source, self._changed
        while True:
            changed.clear()
            source.advance_to(clock.now_ms())
            # The version first: a change the source makes after `next_due` is read, before
            # the wait below begins in the core, still ends the wait.
            version = source.due_version()
            due = source.next_due()
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(changed.wait()),
                asyncio.ensure_future(
                    _bridge.watch(functools.partial(source.due_changed, since=version))
                ),
            ]
            if due is not None:
                # At least a millisecond: what is due now the source fires by itself; what is
                # due later needs the clock to move.
                delay = max(1, due - clock.now_ms()) / 1000
                waits.append(asyncio.ensure_future(clock.sleep(delay)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
