"""A `WorkflowClient` for tests: it records the calls and answers what the test set.

What Hazel's tests do with a mock HTTP layer, typed: code under test gets a `RecordingClient`
where it would get a `Client`, and the test reads which workflows it started (and which entity
RPCs it sent) with which payloads, and sets the results, replies or errors they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel

from plait.cluster import ClusterError, Rpc
from plait.deferred import DurableDeferred
from plait.errors import DeferredTokenError, InvalidArgumentError, UnknownExecutionError
from plait.exits import Complete, Exit, Failure, Success, Suspended
from plait.http.errors import ResultNotSetError, UnexpectedResponseError
from plait.http.wire import DeferredWire, RpcWire, WorkflowWire, entity_id_segment
from plait.http.workflow_client import WorkflowClient
from plait.ids import DeferredToken
from plait.workflow import Workflow

__all__ = ["RecordedCall", "RecordingClient"]

P = TypeVar("P", bound=BaseModel)
S = TypeVar("S")
A = TypeVar("A")

CallKind = Literal["execute", "discard", "poll", "interrupt", "resume", "done", "call"]


@dataclass(frozen=True)
class RecordedCall:
    """One call made on a `RecordingClient`.

    Attributes:
        kind: Which method: execute, discard, poll, interrupt, resume, done (a deferred) or
            call (an entity RPC).
        name: The workflow's name (the deferred's, for `done`; `Entity.rpc` for `call`).
        execution_id: The execution it named (empty for `call`).
        payload: The validated payload (execute, discard, call).
        exit: The deferred's outcome (done).
        entity_id: The entity instance it was sent to (call).
        discard: Sent without waiting for the reply (call).
    """

    kind: CallKind
    name: str
    execution_id: str
    payload: Any = None
    exit: Exit | None = None
    entity_id: str = ""
    discard: bool = False


@dataclass
class _Outcomes:
    by_workflow: dict[str, Exit] = field(default_factory=dict)
    by_execution: dict[str, Exit] = field(default_factory=dict)
    by_rpc: dict[str, Exit] = field(default_factory=dict)
    by_instance: dict[tuple[str, str], Exit] = field(default_factory=dict)


class RecordingClient(WorkflowClient):
    """Records the workflows started, RPCs sent and deferreds completed; answers what tests set.

    Payloads are validated as the real client validates them (`PayloadError`,
    `MalformedMessage`), results are checked against the workflow's success type (replies
    against the RPC's), and errors travel as they would over HTTP: a declared error comes back
    as itself, any other as a `Defect`.

    A workflow with no result (`success=None`) succeeds unless told otherwise; one with a
    result needs `set_result` or `set_error` first. So with an RPC's reply: `set_reply`,
    `set_reply_error`; `sent` reads the RPCs sent.

    Example:
        >>> import asyncio, plait
        >>> from plait.http import RecordingClient
        >>> Notify = plait.Workflow("RecNotify", payload={"message_id": str})
        >>> Name = plait.Workflow("RecName", payload={"thread": str}, success=str)
        >>> client = RecordingClient()
        >>> client.set_result(Name, "Lunch plans")
        >>> async def backend() -> str:
        ...     await client.execute(Notify, {"message_id": "m-1"})
        ...     return await client.execute(Name, {"thread": "t-1"})
        >>> asyncio.run(backend())
        'Lunch plans'
        >>> [(c.name, dict(c.payload)) for c in client.started()]
        [('RecNotify', {'message_id': 'm-1'}), ('RecName', {'thread': 't-1'})]
    """

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []
        self._outcomes = _Outcomes()
        self._wires: dict[str, WorkflowWire[Any]] = {}
        self._rpc_wires: dict[str, RpcWire[Any]] = {}
        self._started: set[str] = set()
        self._deferreds: set[tuple[str, str]] = set()

    # What tests set ----------------------------------------------------------------------

    def set_result(
        self,
        workflow: Workflow[P, S],
        value: S,
        *,
        payload: P | Mapping[str, Any] | None = None,
    ) -> None:
        """Makes executions of `workflow` (only the one for `payload`, if given) return `value`.

        Raises:
            InvalidArgumentError: `value` does not fit the workflow's success type.
        """
        wire = self._wire(workflow)
        try:
            checked = wire.decode_value(value, json_text=False)
        except UnexpectedResponseError as err:
            msg = f"{value!r} is not a result of workflow {workflow.name!r}: {err}"
            raise InvalidArgumentError(msg) from None
        self._set(workflow, Success(checked), payload)

    def set_error(
        self,
        workflow: Workflow[P, Any],
        error: BaseException,
        *,
        payload: P | Mapping[str, Any] | None = None,
    ) -> None:
        """Makes executions of `workflow` (only the one for `payload`, if given) fail."""
        wire = self._wire(workflow)
        # As it would come back over HTTP: a declared error as itself, others as a Defect.
        cause, body = wire.cause(error)
        self._set(workflow, Failure(wire.error_of(cause, body)), payload)

    def _set(
        self, workflow: Workflow[P, Any], exit_: Exit, payload: P | Mapping[str, Any] | None
    ) -> None:
        if payload is None:
            self._outcomes.by_workflow[workflow.name] = exit_
        else:
            self._outcomes.by_execution[workflow.execution_id(payload)] = exit_

    def set_reply(self, rpc: Rpc[Any, S], value: S, *, entity_id: str | None = None) -> None:
        """Makes calls of `rpc` (only to instance `entity_id`, if given) reply `value`.

        Raises:
            InvalidArgumentError: `value` does not fit the RPC's reply type.
        """
        wire = self._rpc_wire(rpc)
        try:
            checked = wire.decode_value(value, json_text=False)
        except UnexpectedResponseError as err:
            msg = f"{value!r} is not a reply of {wire.label}: {err}"
            raise InvalidArgumentError(msg) from None
        self._set_reply(wire, Success(checked), entity_id)

    def set_reply_error(
        self, rpc: Rpc[Any, Any], error: BaseException, *, entity_id: str | None = None
    ) -> None:
        """Makes calls of `rpc` (only to instance `entity_id`, if given) fail with `error`.

        As over HTTP: a declared error comes back as itself, any other as a `Defect`; a
        cluster error (`plait.MailboxFull`, say) as itself.
        """
        wire = self._rpc_wire(rpc)
        if not isinstance(error, ClusterError):
            cause, body = wire.cause(error)
            error = wire.error_of(cause, body)
        self._set_reply(wire, Failure(error), entity_id)

    def _set_reply(self, wire: RpcWire[Any], exit_: Exit, entity_id: str | None) -> None:
        name = _rpc_name(wire.rpc)
        if entity_id is None:
            self._outcomes.by_rpc[name] = exit_
        else:
            self._outcomes.by_instance[(name, entity_id_segment(entity_id))] = exit_

    # What tests read ---------------------------------------------------------------------

    def started(self, workflow: Workflow[Any, Any] | None = None) -> list[RecordedCall]:
        """The executions started (`execute` and `discard`), of `workflow` or of all."""
        return [
            call
            for call in self.calls
            if call.kind in ("execute", "discard")
            and (workflow is None or call.name == workflow.name)
        ]

    def payloads(self, workflow: Workflow[P, Any]) -> list[P]:
        """The payloads `workflow` was started with, in order."""
        return [call.payload for call in self.started(workflow)]

    def sent(self, rpc: Rpc[Any, Any] | None = None) -> list[RecordedCall]:
        """The entity RPCs sent (`call`, with or without `discard`), of `rpc` or of all."""
        name = None if rpc is None else _rpc_name(rpc)
        return [call for call in self.calls if call.kind == "call" and name in (None, call.name)]

    # The client --------------------------------------------------------------------------

    async def execute(self, workflow: Workflow[P, S], payload: P | Mapping[str, Any]) -> S:  # noqa: D102
        model = workflow.validate(payload)
        execution_id = self._record("execute", workflow, model)
        outcome = self._outcome(workflow, execution_id)
        if outcome is None:
            msg = (
                f"RecordingClient: no result set for workflow {workflow.name!r}; "
                f"call set_result({workflow.name}, ...) or set_error first"
            )
            raise ResultNotSetError(msg)
        if isinstance(outcome, Failure):
            raise outcome.error
        value: S = outcome.value
        return value

    async def discard(self, workflow: Workflow[P, Any], payload: P | Mapping[str, Any]) -> str:  # noqa: D102
        return self._record("discard", workflow, workflow.validate(payload))

    async def poll(  # noqa: D102
        self, workflow: Workflow[Any, S], execution_id: str
    ) -> Complete[S] | Suspended | None:
        self.calls.append(RecordedCall("poll", workflow.name, execution_id))
        if execution_id not in self._started:
            msg = f"no execution {execution_id} of workflow {workflow.name!r} was started"
            raise UnknownExecutionError(msg)
        outcome = self._outcome(workflow, execution_id)
        return None if outcome is None else Complete(outcome)

    async def interrupt(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:  # noqa: D102
        self.calls.append(RecordedCall("interrupt", _name(workflow), execution_id))

    async def resume(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:  # noqa: D102
        self.calls.append(RecordedCall("resume", _name(workflow), execution_id))

    async def done(self, deferred: DurableDeferred[Any], token: str, exit: Exit) -> bool:  # noqa: D102
        parsed = DeferredToken.parse(token)
        if parsed.deferred_name != deferred.name:
            msg = f"token is for deferred {parsed.deferred_name!r}, not {deferred.name!r}"
            raise DeferredTokenError(msg)
        wire = DeferredWire(deferred)  # checks the value as the real client does
        if isinstance(exit, Success):
            wire.success_body(exit.value)
        else:
            wire.failure_body(exit.error)
        self.calls.append(RecordedCall("done", deferred.name, parsed.execution_id, exit=exit))
        key = (parsed.execution_id, deferred.name)
        first = key not in self._deferreds
        self._deferreds.add(key)
        return first

    async def call(  # noqa: D102
        self,
        rpc: Rpc[A, S],
        entity_id: str,
        payload: A | Mapping[str, Any] | None = None,
        *,
        discard: bool = False,
    ) -> S:
        wire, name = self._rpc_wire(rpc), _rpc_name(rpc)
        entity_id = entity_id_segment(entity_id)
        # Validated and encoded as the real client does (MalformedMessage); recorded as read.
        value = rpc.decode_payload(rpc.encode_payload(payload))
        self.calls.append(
            RecordedCall("call", name, "", payload=value, entity_id=entity_id, discard=discard)
        )
        outcome = self._outcomes.by_instance.get((name, entity_id))
        if outcome is None:
            outcome = self._outcomes.by_rpc.get(name)
        if discard:
            if isinstance(outcome, Failure) and isinstance(outcome.error, ClusterError):
                raise outcome.error  # refused before it was taken
            return cast("S", None)
        if outcome is None and wire.void:
            outcome = Success(None)
        if outcome is None:
            msg = (
                f"RecordingClient: no reply set for {name}; call set_reply({rpc.name}, ...) "
                "or set_reply_error first"
            )
            raise ResultNotSetError(msg)
        if isinstance(outcome, Failure):
            raise outcome.error
        reply: S = outcome.value
        return reply

    # Plumbing ----------------------------------------------------------------------------

    def _record(self, kind: CallKind, workflow: Workflow[Any, Any], model: BaseModel) -> str:
        execution_id = workflow.execution_id(model)
        self.calls.append(RecordedCall(kind, workflow.name, execution_id, payload=model))
        self._started.add(execution_id)
        return execution_id

    def _outcome(self, workflow: Workflow[Any, Any], execution_id: str) -> Exit | None:
        outcome = self._outcomes.by_execution.get(execution_id)
        if outcome is None:
            outcome = self._outcomes.by_workflow.get(workflow.name)
        if outcome is None and self._wire(workflow).void:
            outcome = Success(None)
        return outcome

    def _wire(self, workflow: Workflow[Any, S]) -> WorkflowWire[S]:
        wire = self._wires.get(workflow.name)
        if wire is None or wire.workflow is not workflow:
            wire = WorkflowWire(workflow)
            self._wires[workflow.name] = wire
        return wire

    def _rpc_wire(self, rpc: Rpc[Any, S]) -> RpcWire[S]:
        name = _rpc_name(rpc)
        wire = self._rpc_wires.get(name)
        if wire is None or wire.rpc is not rpc:
            wire = RpcWire(rpc)
            self._rpc_wires[name] = wire
        return wire


def _rpc_name(rpc: Rpc[Any, Any]) -> str:
    return f"{rpc.entity.name}.{rpc.name}"


def _name(workflow: Workflow[Any, Any] | str) -> str:
    return workflow if isinstance(workflow, str) else workflow.name
