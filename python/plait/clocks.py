"""Time sources for the engine: the system clock, and a virtual clock for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from datetime import datetime, timedelta
from typing import Protocol

from plait._native import wall_clock_ms
from plait.errors import InvalidArgumentError

__all__ = ["Clock", "SystemClock", "VirtualClock", "milliseconds_ceil", "seconds"]


def seconds(duration: timedelta | float) -> float:
    """`duration` in seconds; a number is taken as seconds already."""
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        msg = f"a duration must be a timedelta or a number of seconds, got {duration!r}"
        raise InvalidArgumentError(msg)
    return float(duration)


def milliseconds_ceil(seconds: float) -> int:
    """`seconds` in whole milliseconds, rounded up: a timer due after it never fires early.

    Effect rounds timer durations up too. Float noise below a nanosecond is dropped first, so
    that `1.1` s is 1100 ms and not 1101.

    Example:
        >>> milliseconds_ceil(0.0014), milliseconds_ceil(1.1), milliseconds_ceil(0)
        (2, 1100, 0)
    """
    return math.ceil(round(seconds * 1000, 6))


class Clock(Protocol):
    """What the engine asks of time: the present instant, and sleeping."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Returns after `seconds` of this clock's time."""
        ...


class SystemClock:
    """The wall clock and `asyncio.sleep`."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return wall_clock_ms()

    async def sleep(self, seconds: float) -> None:
        """Sleeps on the event loop."""
        await asyncio.sleep(seconds)


class VirtualClock:
    """A clock that moves only when told to, so hours of durable sleep pass at once in tests.

    Example:
        >>> import asyncio
        >>> async def main() -> bool:
        ...     clock = VirtualClock()
        ...     sleeper = asyncio.ensure_future(clock.sleep(3600))
        ...     await clock.advance(timedelta(hours=1))
        ...     return sleeper.done()
        >>> asyncio.run(main())
        True
    """

    def __init__(self, start: datetime | int | None = None) -> None:
        if start is None:
            self._now = wall_clock_ms()
        elif isinstance(start, datetime):
            self._now = int(start.timestamp() * 1000)
        else:
            self._now = start
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        """The virtual instant, in ms since the Unix epoch."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Returns once the clock has been advanced past now + `seconds` (rounded up to a ms)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers,
            (self._now + milliseconds_ceil(seconds), next(self._order), future),
        )
        await future

    async def advance(self, duration: timedelta | float) -> None:
        """Moves time forward by `duration`, waking sleepers in deadline order.

        Woken work runs (and may schedule further sleeps) before time moves on.
        """
        step = seconds(duration)
        if step < 0:
            msg = f"a virtual clock only moves forward, got {duration!r}"
            raise InvalidArgumentError(msg)
        # Rounded up as sleeps are: advancing by a sleep's duration always wakes it.
        target = self._now + milliseconds_ceil(step)
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            if not future.done():
                future.set_result(None)
            await _settle()
        self._now = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """Lets ready callbacks run for a few loop iterations."""
    for _ in range(rounds):
        await asyncio.sleep(0)
