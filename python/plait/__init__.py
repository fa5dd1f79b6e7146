"""plait: durable workflows and sharded entities for Python, with a Rust core.

Everything public is importable from here; `plait._native` is private.
"""

from plait._native import (
    DEFAULT_SHARDS_PER_GROUP,
    HashRing,
    __version__,
    hash_string,
    shard_id,
    shard_ids,
)
from plait.errors import (
    ClosedError,
    ForkedProcessError,
    InvalidArgumentError,
    MalformedTokenError,
    PlaitError,
    UnknownRunnerError,
)
from plait.ids import DeferredToken, activity_idempotency_key, execution_id, execution_ids
from plait.snowflake import Snowflake, SnowflakeGenerator, SnowflakeParts
from plait.timers import TimerService, TimerWheel, wall_clock_ms

__all__ = [
    "DEFAULT_SHARDS_PER_GROUP",
    "ClosedError",
    "DeferredToken",
    "ForkedProcessError",
    "HashRing",
    "InvalidArgumentError",
    "MalformedTokenError",
    "PlaitError",
    "Snowflake",
    "SnowflakeGenerator",
    "SnowflakeParts",
    "TimerService",
    "TimerWheel",
    "UnknownRunnerError",
    "__version__",
    "activity_idempotency_key",
    "execution_id",
    "execution_ids",
    "hash_string",
    "shard_id",
    "shard_ids",
    "wall_clock_ms",
]
