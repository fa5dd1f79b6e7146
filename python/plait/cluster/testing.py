"""An entity's handlers run in this process, with no engine and no storage: for unit tests.

Effect's `Entity.makeTestClient`: the handlers of one entity type run as they would on a
runner (one instance per id with its state, its concurrency, payloads and replies encoded and
decoded as on the wire), but nothing is stored and no engine runs.

Example:
    >>> import asyncio
    >>> import plait
    >>> Tally = plait.Entity("DocTally")
    >>> @Tally.rpc()
    ... async def add(ctx: plait.EntityContext, n: int) -> int:
    ...     return n + 1
    >>> client = EntityTestClient(Tally, "t-1")
    >>> asyncio.run(client.add(41))
    42
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from plait.cluster.entity import Entity, Rpc
from plait.cluster.runtime import EntityContext, Instance
from plait.exits import Failure, Success

__all__ = ["EntityTestClient"]

_request_ids = itertools.count(1)


class _TestInstance(Instance):
    """An instance with no runtime: keep-alive means nothing without passivation."""

    __slots__ = ("slots",)

    def __init__(self, entity: Entity[Any], entity_id: str) -> None:
        super().__init__(None, entity, entity_id)  # type: ignore[arg-type]
        self.slots = asyncio.Semaphore(entity.concurrency)

    def keep_alive(self, enabled: bool) -> None:
        """Nothing to do: a test instance lives as long as its client's entity."""


# Instances by entity type and id: clients of one id share their instance and its state.
_instances: dict[tuple[str, str], _TestInstance] = {}


class EntityTestClient:
    """The RPCs of one entity instance, run in this process: `await client.add(41)`.

    Clients made for the same entity type and id share one instance (its state persists
    between them); `reset()` forgets every instance of the entity type.

    Raises (from a call):
        MalformedMessage: The payload, or the reply, does not survive encoding.
        The RPC's declared errors, and `Defect` for anything else its handler raised.
    """

    def __init__(self, entity: Entity[Any], entity_id: str) -> None:
        self.entity = entity
        self.entity_id = entity_id
        key = (entity.name, entity_id)
        if key not in _instances:
            _instances[key] = _TestInstance(entity, entity_id)
        self._instance = _instances[key]

    @staticmethod
    def reset(entity: Entity[Any]) -> None:
        """Forgets the instances (and their states) of `entity`."""
        for key in [k for k in _instances if k[0] == entity.name]:
            del _instances[key]

    @property
    def state(self) -> Any:
        """The instance's state, for a test to look at."""
        return self._instance.state

    def __getattr__(self, name: str) -> Callable[..., Any]:
        rpc = self.entity.rpcs.get(name)
        if rpc is None:
            msg = f"entity {self.entity.name!r} has no RPC {name!r}"
            raise AttributeError(msg)
        if rpc.is_stream:
            return lambda payload=None: self._stream(rpc, payload)
        return lambda payload=None: self._call(rpc, payload)

    def _context(self, rpc: Rpc[Any, Any], payload: object) -> tuple[EntityContext[Any], Any]:
        decoded = rpc.decode_payload(rpc.encode_payload(payload))
        return EntityContext(self._instance, next(_request_ids)), decoded

    async def _call(self, rpc: Rpc[Any, Any], payload: object) -> Any:
        ctx, decoded = self._context(rpc, payload)
        async with self._instance.slots:
            try:
                if rpc.takes_payload:
                    value = await rpc.handler(ctx, decoded)
                else:
                    value = await rpc.handler(ctx)
                outcome: Success[Any] | Failure = Success(value)
            except Exception as err:
                outcome = Failure(err)
        encoded, _ = rpc.codec.settle(outcome)
        return rpc.codec.decode(encoded).unwrap()

    async def _stream(self, rpc: Rpc[Any, Any], payload: object) -> AsyncIterator[Any]:
        ctx, decoded = self._context(rpc, payload)
        async with self._instance.slots:
            chunks = rpc.handler(ctx, decoded) if rpc.takes_payload else rpc.handler(ctx)
            try:
                async for chunk in chunks:
                    encoded, _ = rpc.codec.settle(Success(chunk))
                    yield rpc.codec.decode(encoded).unwrap()
            except Exception as err:
                encoded, _ = rpc.codec.settle(Failure(err))
                rpc.codec.decode(encoded).unwrap()
