"""Helpers for tests: a virtual clock, an in-memory engine, an entity test client.

`EntityTestClient` runs an entity's handlers in process, with no engine and no storage.

The pytest fixtures `plait_clock` and `plait_engine` come with the package (a pytest plugin
registered by plait); see `plait.pytest_plugin`.

Example:
    >>> import asyncio
    >>> from datetime import timedelta
    >>> import plait
    >>> Nap = plait.Workflow("Nap", payload={"id": str}, success=str)
    >>> @Nap.implement
    ... async def nap(payload, execution_id):
    ...     await plait.DurableClock.sleep("nap", timedelta(hours=8))
    ...     return "rested"
    >>> async def main() -> str:
    ...     clock = VirtualClock()
    ...     async with memory_engine(clock):
    ...         run = asyncio.ensure_future(Nap.execute({"id": "a"}))
    ...         await clock.advance(timedelta(hours=8))
    ...         return await run
    >>> asyncio.run(main())
    'rested'
"""

from __future__ import annotations

from plait.clocks import VirtualClock
from plait.cluster.testing import EntityTestClient
from plait.engine import Engine

__all__ = ["EntityTestClient", "VirtualClock", "memory_engine"]


def memory_engine(clock: VirtualClock | None = None) -> Engine:
    """An in-memory engine on `clock` (a fresh virtual clock by default)."""
    return Engine.memory(clock=clock if clock is not None else VirtualClock())
