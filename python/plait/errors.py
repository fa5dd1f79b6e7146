"""The exceptions plait raises. Every one derives from `PlaitError`."""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "Defect",
    "DeferredTokenError",
    "DuplicateNameError",
    "EngineClosedError",
    "EngineLockedError",
    "ExecutionCompleteError",
    "ForkedProcessError",
    "Interrupted",
    "InvalidArgumentError",
    "JournalDecodeError",
    "MalformedTokenError",
    "NoEngineError",
    "NonDeterminismError",
    "NotInWorkflowError",
    "PayloadError",
    "PlaitError",
    "QueuePayloadError",
    "ResultSchemaError",
    "StoreConnectError",
    "StoreError",
    "SuspendedRetryExhaustedError",
    "UnknownExecutionError",
    "UnknownQueueError",
    "UnknownRunnerError",
    "WorkflowNotImplementedError",
]

from typing import Any


class PlaitError(Exception):
    """Root of every exception plait raises."""


class InvalidArgumentError(PlaitError, ValueError):
    """An argument is out of range or malformed; the message names the value."""


class MalformedTokenError(InvalidArgumentError):
    """A deferred token is not base64url of a JSON array of three strings."""


class UnknownRunnerError(InvalidArgumentError):
    """A runner named in a call is not in the hash ring."""


class ClosedError(PlaitError):
    """The service was closed; it accepts no more waits."""


class ForkedProcessError(PlaitError):
    """An object made before the process forked was used in the child.

    Its state is the parent's (a snowflake generator would repeat the parent's ids) and its
    locks may be held by threads that do not exist in the child. Make a new one in the child.
    """


class UnknownExecutionError(PlaitError, LookupError):
    """No execution with that id is stored."""


class ExecutionCompleteError(PlaitError):
    """The execution has completed; its result is final and cannot change."""


class PayloadError(InvalidArgumentError):
    """A workflow payload failed validation; nothing was started.

    Attributes:
        workflow: The workflow's name.
        errors: pydantic's error details, one dict per problem.
    """

    def __init__(self, workflow: str, errors: list[Any], message: str) -> None:
        super().__init__(f"invalid payload for workflow {workflow!r}: {message}")
        self.workflow = workflow
        self.errors = errors


class QueuePayloadError(InvalidArgumentError):
    """A durable queue item's payload failed validation; nothing was offered.

    Attributes:
        queue: The queue's name.
        errors: pydantic's error details, one dict per problem.
    """

    def __init__(self, queue: str, errors: list[Any], message: str) -> None:
        super().__init__(f"invalid payload for durable queue {queue!r}: {message}")
        self.queue = queue
        self.errors = errors


class UnknownQueueError(PlaitError, LookupError):
    """No durable queue of that name is defined in this process."""


class DeferredValueError(InvalidArgumentError):
    """A deferred's completion value failed validation against its `success` type.

    Nothing was stored: the deferred can still be completed with a valid value.

    Attributes:
        deferred: The deferred's name.
        errors: pydantic's error details, one dict per problem.
    """

    def __init__(self, deferred: str, errors: list[Any], message: str) -> None:
        super().__init__(f"invalid value for deferred {deferred!r}: {message}")
        self.deferred = deferred
        self.errors = errors


class DuplicateNameError(PlaitError, ValueError):
    """Two live definitions share a name: two workflows, or two `@activity` functions.

    The name is what the journal knows a workflow or a step by, so a second definition made
    elsewhere would take over the first one's executions or results. A definition nothing
    references any more frees its name, and defining again at the same place (the same file
    and line) replaces the earlier definition.

    Attributes:
        kind: "workflow" or "activity".
        name: The name both definitions use.
        first: Where the definition holding the name was made (`module:line`).
        second: Where the refused one was made.
    """

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(
            f"{kind} name {name!r} is already used by the {kind} defined at {first}; "
            f"the {kind} defined at {second} needs another name"
        )
        self.kind = kind
        self.name = name
        self.first = first
        self.second = second


class WorkflowNotImplementedError(PlaitError):
    """The workflow has no implementation registered (see `Workflow.implement`)."""


class DeferredTokenError(InvalidArgumentError):
    """A deferred token does not match a stored execution, its workflow or the deferred."""


class NotInWorkflowError(PlaitError):
    """A workflow-only operation (an activity, a deferred await, ...) ran outside a workflow."""


class NoEngineError(PlaitError):
    """No engine: pass `engine=`, or run inside `async with engine:`."""


class NonDeterminismError(PlaitError):
    """A replay called a different step than the journal holds at that position.

    The run stops without recording anything, so the execution can be resumed once the
    workflow's code matches its history again.

    Attributes:
        execution_id: The execution being replayed.
        position: The step's position in call order (0-based).
        expected: The step the journal holds there.
        found: The step the code called.
    """

    def __init__(self, execution_id: str, position: int, expected: str, found: str) -> None:
        super().__init__(
            f"execution {execution_id}: step {position} is {expected!r} in the journal but the "
            f"workflow called {found!r}; the code changed since this execution started"
        )
        self.execution_id = execution_id
        self.position = position
        self.expected = expected
        self.found = found


class JournalDecodeError(PlaitError):
    """A stored result could not be decoded; the message names the execution and the step."""


class Defect(PlaitError):
    """An unexpected exception, captured as data: its type, message and traceback text.

    Raised in place of an exception that a workflow or activity did not declare in `error=`,
    so that a first run and every replay of it see the same thing.

    Attributes:
        type_name: The qualified name of the original exception's class.
        message: `str()` of the original exception.
        traceback: The formatted traceback where it was raised.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Defect)
            and (other.type_name, other.message) == (self.type_name, self.message)
        )

    __hash__ = PlaitError.__hash__


class ResultSchemaError(Defect):
    """A value did not match its declared schema (an activity's or a workflow's `success`)."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)


class Interrupted(PlaitError):
    """The workflow execution was interrupted.

    Attributes:
        execution_id: The interrupted execution.
    """

    def __init__(self, execution_id: str, message: str = "") -> None:
        super().__init__(message or f"execution {execution_id} was interrupted")
        self.execution_id = execution_id

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Interrupted)
            and (other.execution_id == self.execution_id)
        )

    __hash__ = PlaitError.__hash__


class EngineClosedError(Interrupted, ClosedError):
    """The engine closed while the caller waited for the execution; the execution is kept."""


class SuspendedRetryExhaustedError(PlaitError):
    """`execute` gave up: the execution stayed suspended through its `suspended_retry` schedule."""


class StoreError(PlaitError):
    """The journal store failed in a way retrying cannot fix; the message says what."""


class StoreConnectError(StoreError):
    """The database could not be reached or opened.

    The message names the URL, with any password masked.
    """


class EngineLockedError(StoreError):
    """Another engine already runs on this database (and table prefix)."""


class EngineFencedError(StoreError):
    """This engine lost its claim on the database, and the database refused its writes.

    Another engine took the database over (its lock session ended, or this process was paused
    past its lease). Nothing this engine tried to write after that was stored; the engine stops
    its runs and shuts down, and the executions continue on the engine that holds the claim.
    """
