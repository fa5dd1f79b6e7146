"""Durable timers in memory: the stored timers due within a horizon, in a timer wheel.

The rows in the store are the truth; the wheel only says which of them are due now. A timer
due beyond `TIMER_HORIZON_MS` costs no memory until it comes near: the next window is loaded
half a horizon before the earliest stored timer outside the wheel is due.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from plait._native import TimerWheel
from plait.clocks import Clock
from plait.journal import Journal

__all__ = ["TIMER_HORIZON_MS", "DurableTimers"]

#: Timers due within this much of now are in memory (the wheel); later ones only in the store.
TIMER_HORIZON_MS = 60_000


class DurableTimers:
    """The stored timers near enough to be in memory, and the task that fires them.

    Args:
        clock: The engine's clock.
        journal: The store, read for the timers of each window.
        fire: Called with `(execution_id, deferred name)` of each timer that falls due.
    """

    def __init__(self, clock: Clock, journal: Journal, fire: Callable[[str, str], None]) -> None:
        self._clock = clock
        self._journal = journal
        self._fire = fire
        self._wheel = TimerWheel(now_ms=clock.now_ms())
        # The timers in the wheel: (execution id, deferred) by wheel id, and the other way.
        self.keys_by_id: dict[int, tuple[str, str]] = {}
        self.ids_by_key: dict[tuple[str, str], int] = {}
        self._ids = itertools.count(1)
        # Stored timers due up to here are in the wheel; the next one after, if known.
        self._loaded_until = -1
        self._stored_next: int | None = None
        self._changed = asyncio.Event()

    async def load(self) -> None:
        """Loads the first window (timers already due fire at once when `run` starts)."""
        await self._load(self._clock.now_ms())

    def scheduled(self, execution_id: str, name: str, due: int) -> None:
        """A timer was stored: into the wheel if it falls in the loaded window."""
        if due <= self._loaded_until:
            self._add(execution_id, name, due)
        elif self._stored_next is None or due < self._stored_next:
            self._stored_next = due
            self._changed.set()

    def clear(self) -> None:
        """Forgets the timers in memory (the engine is closing; the store keeps them)."""
        self.keys_by_id.clear()
        self.ids_by_key.clear()

    def _add(self, execution_id: str, name: str, due: int) -> None:
        key = (execution_id, name)
        if key in self.ids_by_key:  # loaded from the store and added by its writer both
            return
        timer_id = next(self._ids)
        self.keys_by_id[timer_id] = key
        self.ids_by_key[key] = timer_id
        self._wheel.insert(timer_id, due)
        self._changed.set()

    async def _load(self, now: int) -> None:
        after, until = self._loaded_until, now + TIMER_HORIZON_MS
        # Set first: a timer scheduled during the read goes into the wheel directly.
        self._loaded_until = until
        timers, following = await self._journal.timers_between(after, until)
        for timer in timers:
            self._add(timer.execution_id, timer.name, timer.due_ms)
        self._stored_next = following

    async def run(self) -> None:
        """Fires timers as they fall due, and loads each next window in time; never returns."""
        wheel, changed, clock = self._wheel, self._changed, self._clock
        while True:
            changed.clear()
            now = clock.now_ms()
            following = self._stored_next
            if following is not None and following - TIMER_HORIZON_MS // 2 <= now:
                await self._load(now)
                continue
            for timer_id in wheel.advance(max(now, wheel.elapsed_ms)):
                key = self.keys_by_id.pop(timer_id)
                del self.ids_by_key[key]
                self._fire(*key)
            wake = wheel.next_due()
            if following is not None:
                load_at = following - TIMER_HORIZON_MS // 2
                wake = load_at if wake is None else min(wake, load_at)
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(changed.wait())]
            if wake is not None:
                waits.append(asyncio.ensure_future(clock.sleep(max(0, wake - now) / 1000)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
