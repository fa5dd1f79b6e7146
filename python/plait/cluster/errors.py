"""The cluster's errors, named as Effect's `ClusterError` variants.

Each is a `plait.PlaitError`, raised to the caller of an entity RPC (or to its sender).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plait.errors import PlaitError

__all__ = [
    "AlreadyProcessingMessage",
    "ClusterError",
    "EntityNotAssignedToRunner",
    "MailboxFull",
    "MalformedMessage",
    "PersistenceError",
    "RunnerNotRegistered",
    "RunnerUnavailable",
]


class ClusterError(PlaitError):
    """Base class of the errors an entity RPC can end with besides its declared ones."""


class MailboxFull(ClusterError):
    """The entity's mailbox, or the runner's room for resident entities, is full.

    Try again later.

    Attributes:
        entity_type: The entity's type.
        entity_id: The entity's id.
    """

    def __init__(self, entity_type: str, entity_id: str, message: str = "") -> None:
        super().__init__(message or f"the mailbox of {entity_type}/{entity_id} is full")
        self.entity_type = entity_type
        self.entity_id = entity_id


class AlreadyProcessingMessage(ClusterError):
    """The request is being processed already (the same request id sent twice)."""


class EntityNotAssignedToRunner(ClusterError):
    """No runner holds the entity's shard (or the entity type is not registered anywhere)."""


class MalformedMessage(ClusterError, ValueError):
    """A request or reply could not be encoded or decoded; nothing was stored.

    An unknown RPC, an invalid payload, or a reply that no longer matches its schema.

    Attributes:
        errors: pydantic's error details, if a validation failed.
    """

    def __init__(self, message: str, errors: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.errors: list[Any] = list(errors)


class PersistenceError(ClusterError):
    """The store failed to save a request or reply."""


class RunnerNotRegistered(ClusterError):
    """The runner is not registered in the cluster (it is shutting down)."""


class RunnerUnavailable(ClusterError):
    """The runner that holds the entity's shard cannot be reached."""
