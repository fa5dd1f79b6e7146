"""What the engine needs of the public API's objects, as protocols.

`plait.workflow`, `plait.activity` and `plait.deferred` sit above the engine and call into it;
the engine never imports them. It knows a workflow, a step or a deferred only by these shapes,
which `Workflow`, `Activity` and `DurableDeferred` have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from plait._native import Deliver, Interrupt, Passivate, Release, RemoteReply, Routed
from plait.clocks import Clock
from plait.exits import Exit, ExitCodec
from plait.schedule import Schedule

__all__ = ["DeferredSpec", "EntityHost", "StepSpec", "WorkflowSpec"]


class WorkflowSpec(Protocol):
    """A workflow definition: its name, schemas, handler and options."""

    @property
    def name(self) -> str:
        """The workflow's name."""
        ...

    @property
    def codec(self) -> ExitCodec:
        """Encodes the workflow's exits."""
        ...

    @property
    def handler(self) -> Callable[[Any, str], Awaitable[Any]] | None:
        """The body, `handler(payload, execution_id)`; None until implemented."""
        ...

    @property
    def suspended_retry(self) -> Schedule | None:
        """For callers of a suspended execution: re-run it after each delay."""
        ...

    @property
    def capture_defects(self) -> bool:
        """Whether an undeclared exception is recorded as the result."""
        ...

    @property
    def suspend_on_failure(self) -> bool:
        """Whether a failure suspends the execution instead of completing it."""
        ...

    def execution_id(self, payload: Any) -> str:
        """The deterministic id of the execution for `payload`."""
        ...

    def encode_payload(self, payload: Any) -> bytes:
        """The payload as stored."""
        ...

    def decode_payload(self, data: bytes) -> Any:
        """A stored payload (raises `JournalDecodeError` if it no longer validates)."""
        ...


class StepSpec(Protocol):
    """An activity: a named step whose outcome is journaled."""

    @property
    def name(self) -> str:
        """The step's name (its journal key's stem)."""
        ...

    @property
    def codec(self) -> ExitCodec:
        """Encodes the step's exits."""
        ...

    @property
    def is_async(self) -> bool:
        """Whether the body is a coroutine function (else it runs in a worker thread)."""
        ...

    @property
    def execute(self) -> Callable[[], Any]:
        """The body."""
        ...

    async def run_body(self, clock: Clock, *, interrupted: bool = False) -> Exit:
        """Runs the body once (retrying interrupts on `clock`) and returns how it ended."""
        ...


class DeferredSpec(Protocol):
    """A durable deferred: a named result completed from outside."""

    @property
    def name(self) -> str:
        """The deferred's name."""
        ...

    @property
    def codec(self) -> ExitCodec:
        """Encodes the deferred's exits."""
        ...


class EntityHost(Protocol):
    """What runs an engine's entities (`plait.cluster`), as the engine hands it work."""

    def take(
        self, work: list[Deliver | Passivate | RemoteReply | Release | Interrupt | Routed]
    ) -> None:
        """Entity work: requests to run, instances to drop, replies, shards to stop serving."""
        ...

    async def drain(self) -> None:
        """The engine is about to close: take no more requests, let running ones finish.

        Waits at most the entities' termination timeout, and until their replies are stored.
        """
        ...

    def close(self, error: BaseException) -> None:
        """The engine closes: callers still waiting get `error`."""
        ...
