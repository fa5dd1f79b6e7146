"""Timers: the hierarchical wheel, and an asyncio-facing service over the wall clock."""

from __future__ import annotations

from collections.abc import Iterable

from plait import _bridge
from plait._native import TimerServiceRef, TimerWheel, wall_clock_ms
from plait.errors import InvalidArgumentError

__all__ = ["TimerService", "TimerWheel", "wall_clock_ms"]


class TimerService:
    """Timers due at wall-clock instants, handed out in batches to an asyncio consumer.

    The wheel and the waiting run in Rust; `poll` parks the coroutine without blocking the
    event loop. Instants are milliseconds since the Unix epoch (see `wall_clock_ms`).

    Example:
        >>> import asyncio
        >>> async def main() -> list[int]:
        ...     timers = TimerService()
        ...     timers.schedule(7, wall_clock_ms() + 20)
        ...     return await timers.poll()
        >>> asyncio.run(main())
        [7]
    """

    __slots__ = ("_ref",)

    def __init__(self) -> None:
        self._ref = TimerServiceRef()

    def schedule(self, timer_id: int, due_ms: int) -> bool:
        """Schedules timer `timer_id` at `due_ms`, moving it if it was already pending.

        Returns:
            Whether a pending timer with that id was replaced.
        """
        return self._ref.schedule(timer_id, due_ms)

    def schedule_many(self, timers: Iterable[tuple[int, int]]) -> None:
        """Schedules `(timer_id, due_ms)` pairs in one call."""
        self._ref.schedule_many(timers)

    def cancel(self, timer_id: int) -> bool:
        """Cancels a timer that has not been handed out. Returns whether there was one."""
        return self._ref.cancel(timer_id)

    async def poll(self, max_timers: int = 1024) -> list[int]:
        """Waits until timers are due and returns up to `max_timers` of their ids, earliest first.

        Cancelling the waiting coroutine loses no timer: due timers are only taken once the
        wait is over.

        Raises:
            InvalidArgumentError: `max_timers` is below 1.
            ClosedError: The service was closed.
        """
        if max_timers < 1:
            raise InvalidArgumentError(f"max_timers must be at least 1, got {max_timers}")
        while True:
            await _bridge.call(self._ref.wait_due)
            due = self._ref.take_due(max_timers)
            if due:
                return due

    def close(self) -> None:
        """Wakes every waiter with `ClosedError`; later polls raise it at once."""
        self._ref.close()

    def __len__(self) -> int:
        return len(self._ref)
