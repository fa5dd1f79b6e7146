"""Retry schedules: the delays between attempts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from plait.clocks import seconds

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Delays that grow by `factor` from `base`, capped at `max_delay`, `times` of them at most.

    Example:
        >>> list(Schedule.exponential(0.2, factor=1.5, max_delay=0.4, times=4).delays())
        [0.2, 0.30000000000000004, 0.4, 0.4]
    """

    base: float
    factor: float = 1.0
    max_delay: float | None = None
    times: int | None = None

    @classmethod
    def exponential(
        cls,
        base: timedelta | float,
        factor: float = 2.0,
        max_delay: timedelta | float | None = None,
        times: int | None = None,
    ) -> Schedule:
        """`base`, `base*factor`, `base*factor**2`, ... capped at `max_delay`."""
        cap = None if max_delay is None else seconds(max_delay)
        return cls(seconds(base), factor, cap, times)

    @classmethod
    def spaced(cls, delay: timedelta | float, times: int | None = None) -> Schedule:
        """The same `delay` each time."""
        return cls(seconds(delay), 1.0, None, times)

    @classmethod
    def immediate(cls, times: int) -> Schedule:
        """`times` retries with no delay."""
        return cls(0.0, 1.0, None, times)

    def delays(self) -> Iterator[float]:
        """The delays before the 2nd, 3rd, ... attempts."""
        delay = self.base
        count = 0
        while self.times is None or count < self.times:
            yield delay if self.max_delay is None else min(delay, self.max_delay)
            delay *= self.factor
            count += 1
