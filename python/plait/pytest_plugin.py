"""pytest fixtures for testing workflows (registered as the `plait` pytest plugin).

- `plait_clock`: a `VirtualClock`;
- `plait_engine`: an in-memory engine on that clock, entered for the test (needs
  pytest-asyncio), so workflow calls and entity RPCs in the test find it;
- `plait_entity_client`: makes `EntityTestClient`s (an entity's handlers run in process, no
  engine, no storage); the instances they made are forgotten after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from plait.clocks import VirtualClock
from plait.cluster.entity import Entity
from plait.cluster.testing import EntityTestClient
from plait.engine import Engine

__all__ = ["plait_clock", "plait_engine", "plait_entity_client"]


@pytest.fixture
def plait_clock() -> VirtualClock:
    """A virtual clock: `await plait_clock.advance(timedelta(hours=1))` moves time."""
    return VirtualClock()


@pytest.fixture
def plait_entity_client() -> Iterator[Callable[[Entity[Any], str], EntityTestClient]]:
    """`plait_entity_client(Counter, "c-1")`: a test client of one instance of an entity."""
    made: list[Entity[Any]] = []

    def make(entity: Entity[Any], entity_id: str) -> EntityTestClient:
        made.append(entity)
        return EntityTestClient(entity, entity_id)

    yield make
    for entity in made:
        EntityTestClient.reset(entity)


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
