"""What a client of workflows and entities can do: `Client` (over HTTP), `RecordingClient`.

Backend code that takes a `WorkflowClient` runs against the proxy in production and against a
`RecordingClient` in its tests. This module imports no web library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from plait.cluster import Rpc
from plait.deferred import DurableDeferred
from plait.exits import Complete, Exit, Failure, Success, Suspended
from plait.workflow import Workflow

__all__ = ["WorkflowClient"]

P = TypeVar("P", bound=BaseModel)
S = TypeVar("S")
T = TypeVar("T")
A = TypeVar("A")


class WorkflowClient(ABC):
    """Calls on workflows that run elsewhere, typed by the same `Workflow` objects.

    The methods mirror `Workflow.execute`, `poll`, `interrupt`, `resume`,
    `DurableDeferred.succeed`, `fail`, `done` and `Rpc.call`; the types come from the workflow
    (or deferred, or RPC) passed in, so `await client.execute(ProcessOrder, order)` is a `str`
    when `ProcessOrder` is a `Workflow[Order, str]`.
    """

    @abstractmethod
    async def execute(self, workflow: Workflow[P, S], payload: P | Mapping[str, Any]) -> S:
        """Runs the workflow for `payload` and returns its result, or raises its error.

        The same payload names the same execution: calling again joins it, or returns its
        stored result.

        Raises:
            PayloadError: The payload does not validate; nothing was sent.
            Defect: The workflow failed with an error it did not declare.
            Interrupted: The execution was interrupted.
        """

    @abstractmethod
    async def discard(self, workflow: Workflow[P, Any], payload: P | Mapping[str, Any]) -> str:
        """Starts the workflow for `payload` without waiting; returns the execution id."""

    @abstractmethod
    async def poll(
        self, workflow: Workflow[Any, S], execution_id: str
    ) -> Complete[S] | Suspended | None:
        """The execution's result; None while it runs.

        Raises:
            UnknownExecutionError: No such execution of the workflow.
        """

    @abstractmethod
    async def interrupt(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:
        """Interrupts the execution (it completes as `Interrupted`, compensations run)."""

    @abstractmethod
    async def resume(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:
        """Runs a suspended execution again (nothing if it is running or complete)."""

    @abstractmethod
    async def done(self, deferred: DurableDeferred[Any], token: str, exit: Exit) -> bool:
        """Completes the deferred `token` names with `exit` and wakes its execution.

        Returns:
            False if the deferred had a result already (the first one stays).

        Raises:
            MalformedTokenError: The token is not a deferred token.
            DeferredTokenError: It names another deferred, or no stored execution.
            DeferredValueError: The value does not fit the deferred's `success` type; nothing
                was stored.
        """

    @abstractmethod
    async def call(
        self,
        rpc: Rpc[A, S],
        entity_id: str,
        payload: A | Mapping[str, Any] | None = None,
        *,
        discard: bool = False,
    ) -> S:
        """Sends an entity RPC to instance `entity_id` and returns its reply, as `Rpc.call`.

        With `discard=True` it returns None once the request was taken (a persisted one:
        stored), without waiting for the reply.

        Raises:
            MalformedMessage: The payload does not validate; nothing was sent.
            InvalidArgumentError: The entity id cannot be addressed (empty, or holds a `/`).
            MailboxFull: The instance's mailbox is full (a volatile RPC; try again later).
            Defect: The handler failed with an error it did not declare.
        """

    async def succeed(self, deferred: DurableDeferred[T], token: str, value: T) -> bool:
        """Completes the deferred with `value` (see `done`)."""
        return await self.done(deferred, token, Success(value))

    async def fail(self, deferred: DurableDeferred[Any], token: str, error: BaseException) -> bool:
        """Completes the deferred with `error`, one it declares (see `done`)."""
        return await self.done(deferred, token, Failure(error))
