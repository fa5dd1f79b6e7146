"""Shard routing: the shard an entity id belongs to, and the runner that serves each shard.

Both are Effect's cluster algorithms, bit for bit: an entity id's shard is Effect's string hash
of it modulo the shards per group (1-based, 300 by default), and shards go to runners on
Effect's weighted consistent-hash ring.

Example:
    >>> shard_id("entity-1")
    231
    >>> ring = HashRing()
    >>> for runner in ("runner1:34431", "runner2:34431"):
    ...     ring.add(runner)
    >>> len(ring.shards(DEFAULT_SHARDS_PER_GROUP))
    300
"""

from __future__ import annotations

from plait._native import DEFAULT_SHARDS_PER_GROUP, HashRing, hash_string, shard_id, shard_ids

__all__ = ["DEFAULT_SHARDS_PER_GROUP", "HashRing", "hash_string", "shard_id", "shard_ids"]
