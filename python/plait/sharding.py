"""Shard routing, and what the running engine's sharding says.

The shard an entity id belongs to, the runner that serves each shard, whether this runner holds
a shard, its snowflake ids.

Both routing halves are Effect's cluster algorithms, bit for bit: an entity id's shard is
Effect's string hash of it modulo the shards per group (1-based, 300 by default), and shards go
to runners on Effect's weighted consistent-hash ring.

Example:
    >>> shard_id("entity-1")
    231
    >>> shard_of("entity-1")
    ShardId(group='default', id=231)
    >>> str(shard_of("entity-1", group="chat"))
    'chat:231'
    >>> ring = HashRing()
    >>> for runner in ("runner1:34431", "runner2:34431"):
    ...     ring.add(runner)
    >>> len(ring.shards(DEFAULT_SHARDS_PER_GROUP))
    300
"""

from __future__ import annotations

from typing import NamedTuple

from plait._native import DEFAULT_SHARDS_PER_GROUP, HashRing, hash_string, shard_id, shard_ids
from plait.cluster.runtime import runtime_of
from plait.engine import Engine, engine_for

__all__ = [
    "DEFAULT_SHARDS_PER_GROUP",
    "HashRing",
    "ShardId",
    "has_shard_id",
    "hash_string",
    "is_shutdown",
    "shard_id",
    "shard_ids",
    "shard_of",
    "snowflake",
]


class ShardId(NamedTuple):
    """A shard: its group and its number in the group (1-based). `str()` gives `group:id`."""

    group: str
    id: int

    def __str__(self) -> str:
        return f"{self.group}:{self.id}"


def shard_of(
    entity_id: str, *, group: str = "default", shards_per_group: int = DEFAULT_SHARDS_PER_GROUP
) -> ShardId:
    """The shard of `entity_id` in `group` (Effect's `Sharding.getShardId`)."""
    return ShardId(group, shard_id(entity_id, shards_per_group))


def has_shard_id(shard: ShardId, *, engine: Engine | None = None) -> bool:
    """Whether the engine (this runner) holds `shard` now: serves its entities.

    A single engine holds every shard while it runs; a runner of a cluster those whose lease it
    holds.
    """
    found = engine_for(engine)
    runtime = runtime_of(found)
    if runtime.sharding is not None:
        return not is_shutdown(engine=found) and str(shard) in runtime.sharding.view().shards
    config = runtime.config
    return (
        not is_shutdown(engine=found)
        and shard.group in config.shard_groups
        and 1 <= shard.id <= config.shards_per_group
    )


def snowflake(*, engine: Engine | None = None) -> int:
    """A new snowflake id from the engine's (the runner's) generator."""
    return runtime_of(engine_for(engine)).ids.next_id()


def is_shutdown(*, engine: Engine | None = None) -> bool:
    """Whether the engine is shut down (or was never started)."""
    return not engine_for(engine).running
