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
from plait.activity import Activity, ActivityFunction, activity, current_attempt
from plait.clocks import SystemClock
from plait.deferred import DurableClock, DurableDeferred
from plait.engine import Engine, WorkflowInstance, current_instance
from plait.errors import (
    ClosedError,
    Defect,
    DeferredTokenError,
    EngineClosedError,
    EngineLockedError,
    ExecutionCompleteError,
    ForkedProcessError,
    Interrupted,
    InvalidArgumentError,
    JournalDecodeError,
    MalformedTokenError,
    NoEngineError,
    NonDeterminismError,
    NotInWorkflowError,
    PayloadError,
    PlaitError,
    ResultSchemaError,
    StoreConnectError,
    StoreError,
    SuspendedRetryExhaustedError,
    UnknownExecutionError,
    UnknownRunnerError,
    WorkflowNotImplementedError,
)
from plait.exits import Complete, Exit, Failure, Success, Suspended, TaggedError
from plait.ids import DeferredToken, activity_idempotency_key, execution_id, execution_ids
from plait.schedule import Schedule
from plait.snowflake import Snowflake, SnowflakeGenerator, SnowflakeParts
from plait.timers import TimerService, TimerWheel, wall_clock_ms
from plait.workflow import (
    Workflow,
    WorkflowFunction,
    add_finalizer,
    with_compensation,
    workflow,
)

__all__ = [
    "DEFAULT_SHARDS_PER_GROUP",
    "Activity",
    "ActivityFunction",
    "ClosedError",
    "Complete",
    "Defect",
    "DeferredToken",
    "DeferredTokenError",
    "DurableClock",
    "DurableDeferred",
    "Engine",
    "EngineClosedError",
    "EngineLockedError",
    "ExecutionCompleteError",
    "Exit",
    "Failure",
    "ForkedProcessError",
    "HashRing",
    "Interrupted",
    "InvalidArgumentError",
    "JournalDecodeError",
    "MalformedTokenError",
    "NoEngineError",
    "NonDeterminismError",
    "NotInWorkflowError",
    "PayloadError",
    "PlaitError",
    "ResultSchemaError",
    "Schedule",
    "Snowflake",
    "SnowflakeGenerator",
    "SnowflakeParts",
    "StoreConnectError",
    "StoreError",
    "Success",
    "Suspended",
    "SuspendedRetryExhaustedError",
    "SystemClock",
    "TaggedError",
    "TimerService",
    "TimerWheel",
    "UnknownExecutionError",
    "UnknownRunnerError",
    "Workflow",
    "WorkflowFunction",
    "WorkflowInstance",
    "WorkflowNotImplementedError",
    "__version__",
    "activity",
    "activity_idempotency_key",
    "add_finalizer",
    "current_attempt",
    "current_instance",
    "execution_id",
    "execution_ids",
    "hash_string",
    "shard_id",
    "shard_ids",
    "wall_clock_ms",
    "with_compensation",
    "workflow",
]
