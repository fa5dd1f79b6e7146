"""The cluster: entities addressed by id, with typed RPCs, volatile or persisted.

`plait.Entity`, `plait.EntityContext` and the cluster's errors are re-exported from `plait`.
"""

from plait.cluster.config import RunnerAddress, ShardingConfig
from plait.cluster.cron import ClusterCron
from plait.cluster.entity import Entity, EntityClient, Rpc
from plait.cluster.errors import (
    AlreadyProcessingMessage,
    ClusterError,
    EntityNotAssignedToRunner,
    MailboxFull,
    MalformedMessage,
    PersistenceError,
    RunnerNotRegistered,
    RunnerUnavailable,
)
from plait.cluster.runner import ClusterView, Runner
from plait.cluster.runtime import EntityContext
from plait.cluster.singleton import Singleton

__all__ = [
    "AlreadyProcessingMessage",
    "ClusterCron",
    "ClusterError",
    "ClusterView",
    "Entity",
    "EntityClient",
    "EntityContext",
    "EntityNotAssignedToRunner",
    "MailboxFull",
    "MalformedMessage",
    "PersistenceError",
    "Rpc",
    "Runner",
    "RunnerAddress",
    "RunnerNotRegistered",
    "RunnerUnavailable",
    "ShardingConfig",
    "Singleton",
]
