"""plait: durable workflows and sharded entities for Python, with a Rust core.

The workflow API is importable from here. The primitives under it have their own modules:
`plait.sharding` (shard routing), `plait.timers` (the timer wheel and service) and
`plait.snowflake` (snowflake ids). `plait._native` is private.

The ways in over HTTP need the `http` extra: `plait.http` (the proxy, `RecordingClient`),
`plait.Client` (loaded on first use, so `import plait` loads no web library) and the `plait`
command (`plait.cli`).
"""

from typing import TYPE_CHECKING, Any

from plait import sharding as sharding
from plait import snowflake as snowflake
from plait import timers as timers
from plait._native import __version__
from plait.activity import Activity, ActivityFunction, activity, current_attempt
from plait.clocks import SystemClock
from plait.cluster import (
    AlreadyProcessingMessage,
    ClusterCron,
    ClusterError,
    ClusterView,
    Entity,
    EntityClient,
    EntityContext,
    EntityNotAssignedToRunner,
    MailboxFull,
    MalformedMessage,
    PersistenceError,
    Rpc,
    Runner,
    RunnerAddress,
    RunnerNotRegistered,
    RunnerUnavailable,
    ShardingConfig,
    Singleton,
)
from plait.deferred import DurableClock, DurableDeferred
from plait.engine import (
    Engine,
    ExecutionPage,
    ExecutionStatusName,
    ExecutionSummary,
    ExecutionTimeline,
    TimelineEvent,
    WorkflowInstance,
    current_instance,
)
from plait.errors import (
    ClosedError,
    Defect,
    DeferredTokenError,
    DeferredValueError,
    DuplicateNameError,
    EngineClosedError,
    EngineFencedError,
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
    QueuePayloadError,
    ResultSchemaError,
    StoreConnectError,
    StoreError,
    SuspendedRetryExhaustedError,
    UnknownExecutionError,
    UnknownQueueError,
    UnknownRunnerError,
    WorkflowNotImplementedError,
)
from plait.exits import Complete, Exit, Failure, Success, Suspended, TaggedError
from plait.ids import DeferredToken, activity_idempotency_key, execution_id, execution_ids
from plait.queue import DurableQueue, QueueWorker
from plait.schedule import Schedule
from plait.workflow import (
    Workflow,
    WorkflowFunction,
    add_finalizer,
    with_compensation,
    workflow,
)

if TYPE_CHECKING:
    from plait.http.client import Client as Client

__all__ = [
    "Activity",
    "ActivityFunction",
    "AlreadyProcessingMessage",
    "ClosedError",
    "ClusterCron",
    "ClusterError",
    "ClusterView",
    "Complete",
    "Defect",
    "DeferredToken",
    "DeferredTokenError",
    "DeferredValueError",
    "DuplicateNameError",
    "DurableClock",
    "DurableDeferred",
    "DurableQueue",
    "Engine",
    "EngineClosedError",
    "EngineFencedError",
    "EngineLockedError",
    "Entity",
    "EntityClient",
    "EntityContext",
    "EntityNotAssignedToRunner",
    "ExecutionCompleteError",
    "ExecutionPage",
    "ExecutionStatusName",
    "ExecutionSummary",
    "ExecutionTimeline",
    "Exit",
    "Failure",
    "ForkedProcessError",
    "Interrupted",
    "InvalidArgumentError",
    "JournalDecodeError",
    "MailboxFull",
    "MalformedMessage",
    "MalformedTokenError",
    "NoEngineError",
    "NonDeterminismError",
    "NotInWorkflowError",
    "PayloadError",
    "PersistenceError",
    "PlaitError",
    "QueuePayloadError",
    "QueueWorker",
    "ResultSchemaError",
    "Rpc",
    "Runner",
    "RunnerAddress",
    "RunnerNotRegistered",
    "RunnerUnavailable",
    "Schedule",
    "ShardingConfig",
    "Singleton",
    "StoreConnectError",
    "StoreError",
    "Success",
    "Suspended",
    "SuspendedRetryExhaustedError",
    "SystemClock",
    "TaggedError",
    "TimelineEvent",
    "UnknownExecutionError",
    "UnknownQueueError",
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
    "with_compensation",
    "workflow",
]


def __getattr__(name: str) -> Any:
    # `plait.Client` needs httpx, of the `http` extra: loaded on first use, so that
    # `import plait` imports no web library.
    if name == "Client":
        try:
            from plait.http.client import Client
        except ImportError as err:
            msg = f"plait.Client needs the http extra: pip install 'plait[http]' ({err})"
            raise ImportError(msg) from err
        return Client
    msg = f"module 'plait' has no attribute {name!r}"
    raise AttributeError(msg)
