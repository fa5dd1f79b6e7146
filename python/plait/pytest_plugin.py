"""pytest fixtures for testing workflows (registered as the `plait` pytest plugin).

- `plait_clock`: a `VirtualClock`;
- `plait_engine`: an in-memory engine on that clock, entered for the test (needs
  pytest-asyncio), so workflow calls in the test find it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from plait.clocks import VirtualClock
from plait.engine import Engine

__all__ = ["plait_clock", "plait_engine"]


@pytest.fixture
def plait_clock() -> VirtualClock:
    """A virtual clock: `await plait_clock.advance(timedelta(hours=1))` moves time."""
    return VirtualClock()


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the engine fixture needs an event loop plugin
    pass
else:

    @pytest_asyncio.fixture
    async def plait_engine(plait_clock: VirtualClock) -> AsyncIterator[Engine]:
        """An in-memory engine on `plait_clock`, entered for the test."""
        async with Engine.memory(clock=plait_clock) as engine:
            yield engine
