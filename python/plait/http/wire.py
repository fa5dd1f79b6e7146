"""What crosses the wire between the proxy and its clients: routes, headers and JSON bodies.

The proxy (`plait.http.proxy`) and the client (`plait.http.client`) both read this module, so
the two cannot drift apart. It imports pydantic and plait, and no web library.

The shapes follow Effect's `HttpApi`, which Effect's `WorkflowProxy` and `EntityProxy` routes
use (an entity RPC's reply and errors are written as a workflow's):

- a workflow's result is its success value as JSON (no body for a workflow with no result);
- a declared error is its tagged JSON, `{"_tag": "CardDeclined", ...fields}`, with status 500;
- a defect is `{"_tag": "Die", "defect": {"name": ..., "message": ...}}` and an interruption
  `{"_tag": "Interrupt", "executionId": ...}`, as in the journal's encoding of a cause, also
  with status 500. The `Plait-Cause` header (`Fail`, `Die` or `Interrupt`) says which, so a
  declared error whose class is named `Die` is not mistaken for a defect;
- an error of plait's own (a payload that does not validate, an unknown execution) is
  `{"_tag": "<plait error class>", "message": ..., "errors": [...]}` with its 4xx or 5xx status;
  so is a cluster error (`MailboxFull`, 503; `MalformedMessage`, 422; ...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, cast

import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

from plait.cluster import (
    AlreadyProcessingMessage,
    EntityNotAssignedToRunner,
    MailboxFull,
    MalformedMessage,
    PersistenceError,
    Rpc,
    RunnerNotRegistered,
    RunnerUnavailable,
)
from plait.deferred import DurableDeferred
from plait.errors import (
    Defect,
    DeferredTokenError,
    DeferredValueError,
    EngineClosedError,
    EngineFencedError,
    Interrupted,
    InvalidArgumentError,
    JournalDecodeError,
    MalformedTokenError,
    NoEngineError,
    PayloadError,
    PlaitError,
    ResultSchemaError,
    SuspendedRetryExhaustedError,
    UnknownExecutionError,
    WorkflowNotImplementedError,
)
from plait.exits import Complete, ExitCodec, Failure, Success, Suspended, TaggedError
from plait.http.errors import (
    ForbiddenError,
    InvalidRequestError,
    MalformedRequestError,
    NotFoundError,
    ProxyError,
    ProxyUnavailableError,
    RequestTooLargeError,
    UnauthorizedError,
    UnexpectedResponseError,
    UnsupportedMediaTypeError,
)
from plait.ids import checked_name
from plait.workflow import Workflow

__all__ = [
    "CAUSE_HEADER",
    "DEFAULT_PORT",
    "EXECUTION_ID_HEADER",
    "EXECUTION_ID_PATTERN",
    "ClusterStatus",
    "DeferredCompletion",
    "DeferredFailureBody",
    "DeferredStored",
    "DeferredSuccessBody",
    "DeferredWire",
    "EntityInfo",
    "ExecutionCounts",
    "ExecutionStatus",
    "Problem",
    "ResumePayload",
    "RpcInfo",
    "RpcWire",
    "RunnerShards",
    "WorkflowWire",
    "entity_id_segment",
    "error_from_problem",
    "problem_of",
    "rpc_path",
    "status_of",
    "workflow_path",
]

S = TypeVar("S")

#: Effect's `WorkflowProxyServer` port, which Effect's clients default to.
DEFAULT_PORT = 3020
#: The response header holding the execution id (execute, discard).
EXECUTION_ID_HEADER = "plait-execution-id"
#: The response header saying what a 500 from a workflow route holds: Fail, Die or Interrupt.
CAUSE_HEADER = "plait-cause"
#: Execution ids are Effect's: the first 16 bytes of a SHA-256, in lowercase hex.
EXECUTION_ID_PATTERN = r"^[0-9a-f]{32}$"

Cause = Literal["Fail", "Die", "Interrupt"]
StatusName = Literal["running", "suspended", "succeeded", "failed"]


def workflow_path(name: str) -> str:
    """The route of a workflow: `/` and its name in lower case, as Effect's `WorkflowProxy`."""
    return "/" + name.lower()


def entity_id_segment(entity_id: str) -> str:
    """`entity_id`, if a URL path can carry it as one segment (the route's `{entity_id}`).

    Raises:
        InvalidArgumentError: It is not a non-empty str, holds `/` or NUL, or is `.` or `..`
            (which a URL path resolves away).
    """
    checked = checked_name("an entity id", entity_id)
    if "/" in checked or checked in {".", ".."}:
        msg = f"entity id {checked!r} cannot travel as a URL path segment (a '/', or a dot name)"
        raise InvalidArgumentError(msg)
    return checked


def rpc_path(entity: str, rpc: str) -> str:
    """The route of an entity's RPC, before its `/{entity_id}`: `/<entity>/<rpc>` in lower case.

    Effect's `EntityProxy.toHttpApiGroup(name, Entity)` routes `/<rpc in lower case>/:entityId`,
    and its documentation prefixes the group with the entity (`.prefix("/counter")`): this.
    """
    return f"/{entity.lower()}/{rpc.lower()}"


# Plain bodies -----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ResumePayload(_Wire):
    """The body of `POST /<workflow>/resume`, as Effect's `WorkflowProxy` sends it."""

    execution_id: str = Field(alias="executionId", pattern=EXECUTION_ID_PATTERN)


class Problem(_Wire):
    """An error of plait's own: a refused request, or a failure outside the workflow's result."""

    tag: str = Field(alias="_tag", description="The plait error class, e.g. PayloadError.")
    message: str
    errors: list[Any] = Field(
        default_factory=list, description="Details, one per problem (pydantic's for 422)."
    )


class DieCause(_Wire):
    """A defect: the workflow failed with an exception it did not declare."""

    class Defect(_Wire):
        """The defect's class name and message (its traceback stays on the server)."""

        name: str
        message: str

    tag: Literal["Die"] = Field(alias="_tag")
    defect: Defect


class InterruptCause(_Wire):
    """The execution was interrupted."""

    tag: Literal["Interrupt"] = Field(alias="_tag")
    execution_id: str = Field(alias="executionId")


class DeferredSuccessBody(_Wire):
    """Completes a deferred with a value (none for a deferred without one)."""

    tag: Literal["Success"] = Field(alias="_tag")
    value: Any = None


class DeferredFailureBody(_Wire):
    """Fails a deferred with one of its declared errors, as tagged JSON."""

    tag: Literal["Failure"] = Field(alias="_tag")
    error: dict[str, Any] = Field(description='A declared error: {"_tag": "<class>", ...}.')


#: The body of `POST /deferred/{token}`: a success or a failure, told apart by `_tag`.
DeferredCompletion = Annotated[
    DeferredSuccessBody | DeferredFailureBody, Field(discriminator="tag")
]


class DeferredStored(_Wire):
    """The answer to a deferred's completion."""

    stored: bool = Field(description="False if the deferred had a result already (it stays).")


class ExecutionStatus(_Wire):
    """An execution's status, and its result or error once it has one.

    `error` is the cause of a failure (`Fail` with the declared error, `Die`, `Interrupt`), or
    the defect a suspended execution suspended on (`suspend_on_failure`).
    """

    execution_id: str = Field(alias="executionId")
    workflow: str
    status: StatusName
    result: Any = None
    error: dict[str, Any] | None = None


class ExecutionCounts(_Wire):
    """How many stored executions have each status; each count stops at `cap`."""

    running: int
    suspended: int
    succeeded: int
    failed: int
    interrupted: int
    cap: int = Field(description="Counting stops here: a count equal to it means at least.")


class RpcInfo(_Wire):
    """One RPC an entity serves over HTTP."""

    name: str
    path: str = Field(description="POST it with the payload; `/discard` after it: no reply.")
    persisted: bool = Field(description="Stored before it runs, answered once.")
    primary_key: bool = Field(
        alias="primaryKey", description="Persisted with a primary key: a retry is answered once."
    )
    payload: bool = Field(description="False: it takes no payload (send no body, or null).")


class EntityInfo(_Wire):
    """An entity type the proxy serves, and its RPCs."""

    name: str
    rpcs: list[RpcInfo]


class RunnerShards(_Wire):
    """A runner of the cluster and the shards the ring gives it."""

    address: str
    shards: list[str] = Field(description='Its shards, "group:id", in shard order.')
    this: bool = Field(description="It is the runner this proxy runs in.")
    entities: int | None = Field(
        default=None,
        description=(
            "Entity instances resident in it: this runner's now, another's as of its last "
            "heartbeat (none: not registered)."
        ),
    )


class ClusterStatus(_Wire):
    """What the proxy's engine sees of its cluster (`GET /cluster`).

    On a single engine, `cluster` is false: it holds every shard itself, and only `entities`,
    `entityTypes` and `singletons` say anything. A client-only process (no `address`) holds no
    shard: no runner of `assignments` is `this`.
    """

    cluster: bool = Field(description="Whether the proxy runs in a runner of a cluster.")
    address: str | None = Field(
        default=None, description="This runner's address (none: client only)."
    )
    machine_id: int | None = Field(default=None, alias="machineId")
    runners: int = Field(default=0, description="Runners registered.")
    healthy_runners: int = Field(
        default=0, alias="healthyRunners", description="Runners in the rings."
    )
    assignments: list[RunnerShards] = Field(
        default_factory=list, description="Every runner the ring gives shards, and its shards."
    )
    shards: list[str] = Field(default_factory=list, description="Shards this runner holds.")
    releasing: list[str] = Field(default_factory=list, description="Shards it is draining.")
    entities: int = Field(description="Entity instances resident in this engine.")
    entity_types: dict[str, int] = Field(
        alias="entityTypes", description="Resident instances by entity type, in this engine."
    )
    singletons: list[str] = Field(description="Singletons running in this engine.")
    fenced_writes: int = Field(
        default=0, alias="fencedWrites", description="Writes refused: the shard's lease was lost."
    )


# Declared errors --------------------------------------------------------------------------


class _DeclaredErrors:
    """A workflow's or deferred's declared error classes, as tagged JSON."""

    def __init__(self, error_types: Iterable[type[BaseException]]) -> None:
        self.classes = {cls.__name__: cls for cls in error_types}

    def encode(self, error: BaseException) -> dict[str, Any]:
        """`error`, a declared one, as `{"_tag": "<class>", ...fields}`."""
        tag = type(error).__name__
        if isinstance(error, TaggedError):
            model = type(error).__plait_model__
            fields = model.model_validate(error.fields()).model_dump(mode="json")
            return {"_tag": tag, **fields}
        return {"_tag": tag, "args": to_jsonable_python(list(error.args), fallback=str)}

    def decode(self, data: object) -> BaseException | None:
        """The declared error `data` encodes, or None if it names none of them.

        Raises:
            pydantic.ValidationError: Its fields do not fit its class.
        """
        if not isinstance(data, dict):
            return None
        fields = dict(data)
        cls = self.classes.get(cast("str", fields.pop("_tag", None)))
        if cls is None:
            return None
        if issubclass(cls, TaggedError):
            return cls(**fields)
        args = fields.get("args", [])
        return cls(*args) if isinstance(args, list) else cls()

    def models(self) -> list[type[BaseModel]]:
        """One model per declared class, for the OpenAPI schema."""
        models: list[type[BaseModel]] = []
        for name, cls in self.classes.items():
            tag: Any = (Literal[name], Field(alias="_tag"))
            if issubclass(cls, TaggedError):
                fields: dict[str, Any] = {
                    field: (info.annotation, info)
                    for field, info in cls.__plait_model__.model_fields.items()
                }
            else:
                fields = {"args": (list[Any], Field(default_factory=list))}
            models.append(pydantic.create_model(name, __base__=_Wire, tag=tag, **fields))
        return models


_FAIL_TAG: Any = (Literal["Fail"], Field(alias="_tag"))


def _defect(error: Defect) -> dict[str, Any]:
    name = error.type_name
    if isinstance(error, ResultSchemaError):
        name = "plait.ResultSchemaError"
    return {"name": name, "message": error.message}


def _defect_of(data: object) -> Defect:
    defect = data if isinstance(data, dict) else {}
    name, message = str(defect.get("name", "")), str(defect.get("message", ""))
    cls = ResultSchemaError if name == "plait.ResultSchemaError" else Defect
    return cls(name, message)


# A workflow on the wire -------------------------------------------------------------------


class _OutcomeWire(Generic[S]):
    """How the results and errors of one workflow or RPC are written and read over HTTP.

    Args:
        label: What it is, for messages (`workflow 'Name'`, `RPC Counter.increment`).
        codec: Its success type and declared error classes.
    """

    def __init__(self, label: str, codec: ExitCodec) -> None:
        self.label = label
        self.codec = codec
        success = codec.success
        self.void = success is None or success is type(None)
        self.success_type: Any = None if self.void else success
        self._adapter: TypeAdapter[Any] | None = (
            None if self.void else TypeAdapter(cast("Any", success))
        )
        self.errors = _DeclaredErrors(codec.error_types)

    # Results ---------------------------------------------------------------------------------

    def encode_value(self, value: Any) -> bytes:
        """A success value as its JSON body (empty for no result)."""
        if self._adapter is None:
            return b""
        return self._adapter.dump_json(value)

    def jsonable_value(self, value: Any) -> Any:
        """A success value as a JSON-ready Python value (None for no result)."""
        return None if self._adapter is None else self._adapter.dump_python(value, mode="json")

    def decode_value(self, data: Any, *, json_text: bool) -> S:
        """A success value read from a body (`json_text`) or from parsed JSON.

        Raises:
            UnexpectedResponseError: It does not fit the success type.
        """
        if self._adapter is None:
            return cast("S", None)
        try:
            if json_text:
                return cast("S", self._adapter.validate_json(data))
            return cast("S", self._adapter.validate_python(data))
        except pydantic.ValidationError as err:
            msg = f"{self.label}: result does not fit its type: {err}"
            raise UnexpectedResponseError(msg) from None

    # Failures --------------------------------------------------------------------------------

    def is_outcome(self, error: BaseException) -> bool:
        """Whether `error` is its own failure (else one of plait's, or a bug)."""
        return isinstance(error, (Defect, Interrupted, *self.codec.error_types))

    def cause(self, error: BaseException) -> tuple[Cause, dict[str, Any]]:
        """A failure as the header value and the body of its 500 response.

        A declared error is its tagged JSON alone (Effect's body); a defect or an interruption
        is the cause as the journal encodes it.
        """
        if isinstance(error, Interrupted):
            return "Interrupt", {"_tag": "Interrupt", "executionId": error.execution_id}
        if isinstance(error, self.codec.error_types) and not isinstance(error, Defect):
            return "Fail", self.errors.encode(error)
        defect = error if isinstance(error, Defect) else Defect(type(error).__name__, str(error))
        return "Die", {"_tag": "Die", "defect": _defect(defect)}

    def cause_json(self, error: BaseException) -> dict[str, Any]:
        """The failure as a cause object: `{"_tag": "Fail", "error": ...}`, Die or Interrupt."""
        kind, body = self.cause(error)
        return {"_tag": "Fail", "error": body} if kind == "Fail" else body

    def error_of(self, kind: str | None, body: Any) -> BaseException:
        """The exception a 500 response stands for.

        Without the `Plait-Cause` header (an Effect server, say), a body naming a declared
        error is that error, one tagged `Die` or `Interrupt` that cause, one tagged with a plait
        error that error, and anything else an `UnexpectedResponseError`.

        Raises:
            UnexpectedResponseError: A declared error whose fields do not fit its class.
        """
        tag = body.get("_tag") if isinstance(body, dict) else None
        if kind == "Interrupt" or (kind is None and tag == "Interrupt"):
            return Interrupted(str(body.get("executionId", "")))
        if kind == "Die" or (kind is None and tag == "Die"):
            return _defect_of(body.get("defect"))
        try:
            declared = self.errors.decode(body)
        except pydantic.ValidationError as err:
            msg = f"{self.label}: error {tag!r} does not fit its class: {err}"
            raise UnexpectedResponseError(msg) from None
        if declared is not None:
            return declared
        if kind is None and isinstance(body, dict) and isinstance(tag, str):
            return error_from_problem(500, body)
        msg = f"{self.label}: the proxy answered 500 with {str(body)[:200]!r}"
        return UnexpectedResponseError(msg)

    def error_from_cause(self, cause: dict[str, Any]) -> BaseException:
        """The exception a cause object (a status's `error`) stands for."""
        tag = cause.get("_tag")
        if tag == "Fail":
            return self.error_of("Fail", cause.get("error"))
        return self.error_of(str(tag), cause)

    def error_union(self) -> Any:
        """The declared errors' models as one union (None if it declares none)."""
        models = self.errors.models()
        if not models:
            return None
        union: Any = models[0]
        for model in models[1:]:
            union = union | model
        return union

    def failure_union(self) -> Any:
        """What a 500 from its call may hold: a declared error, Die or Interrupt."""
        declared = self.error_union()
        return (
            DieCause | InterruptCause if declared is None else declared | DieCause | InterruptCause
        )


class WorkflowWire(_OutcomeWire[S]):
    """How one workflow's results and errors are written and read over HTTP.

    Args:
        workflow: The workflow.
    """

    def __init__(self, workflow: Workflow[Any, S]) -> None:
        super().__init__(f"workflow {workflow.name!r}", workflow.codec)
        self.workflow = workflow
        self.path = workflow_path(workflow.name)

    # Status ----------------------------------------------------------------------------------

    def result_of(self, status: ExecutionStatus) -> Complete[S] | Suspended | None:
        """An execution's status as `Workflow.poll` gives it: None while running."""
        if status.status == "running":
            return None
        if status.status == "suspended":
            cause = status.error
            defect = self.error_from_cause(cause) if cause is not None else None
            return Suspended(defect if isinstance(defect, Defect) else None)
        if status.status == "succeeded":
            return Complete(Success(self.decode_value(status.result, json_text=False)))
        return Complete(Failure(self.error_from_cause(status.error or {})))

    def status_model(self) -> type[BaseModel]:
        """`ExecutionStatus` with this workflow's result and error types, for the OpenAPI schema."""
        # `Optional[...]`, not `... | None`: a success type may be any type form.
        result: Any = None if self.void else Optional[self.success_type]  # noqa: UP045
        fail: Any = pydantic.create_model(
            f"{self.workflow.name}Fail",
            __base__=_Wire,
            tag=_FAIL_TAG,
            error=(self.error_union() or dict[str, Any], ...),
        )
        error: Any = fail | DieCause | InterruptCause
        return pydantic.create_model(
            f"{self.workflow.name}Execution",
            __base__=ExecutionStatus,
            result=(result, None),
            error=(error | None, None),
        )


class RpcWire(_OutcomeWire[S]):
    """How one entity RPC's payloads, replies and errors are written and read over HTTP.

    Args:
        rpc: The RPC.
    """

    def __init__(self, rpc: Rpc[Any, S]) -> None:
        super().__init__(f"RPC {rpc.entity.name}.{rpc.name}", rpc.codec)
        self.rpc = rpc
        self.path = rpc_path(rpc.entity.name, rpc.name)

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice is answered once: persisted, with a primary key."""
        return self.rpc.persisted and self.rpc.primary_key is not None


def status_of(
    wire: WorkflowWire[Any], execution_id: str, result: Complete[Any] | Suspended | None
) -> ExecutionStatus:
    """The status of an execution `Workflow.poll` found (None: running)."""
    name = wire.workflow.name
    if result is None:
        return ExecutionStatus(executionId=execution_id, workflow=name, status="running")
    if isinstance(result, Suspended):
        cause = None if result.cause is None else wire.cause_json(result.cause)
        return ExecutionStatus(
            executionId=execution_id, workflow=name, status="suspended", error=cause
        )
    exit_ = result.exit
    if isinstance(exit_, Success):
        value = wire.jsonable_value(exit_.value)
        return ExecutionStatus(
            executionId=execution_id, workflow=name, status="succeeded", result=value
        )
    return ExecutionStatus(
        executionId=execution_id,
        workflow=name,
        status="failed",
        error=wire.cause_json(exit_.error),
    )


# A deferred on the wire -------------------------------------------------------------------


class DeferredWire:
    """How a deferred's completion is written and read over HTTP."""

    def __init__(self, deferred: DurableDeferred[Any]) -> None:
        self.deferred = deferred
        self.errors = _DeclaredErrors(deferred.codec.error_types)

    def success_body(self, value: Any) -> dict[str, Any]:
        """The body completing the deferred with `value`."""
        success = self.deferred.codec.success
        if success is None or success is type(None):
            return {"_tag": "Success", "value": None}
        adapter: TypeAdapter[Any] = TypeAdapter(cast("Any", success))
        try:
            jsonable = adapter.dump_python(adapter.validate_python(value), mode="json")
        except (pydantic.ValidationError, PydanticSerializationError) as err:
            raise DeferredValueError(self.deferred.name, _errors_of(err), str(err)) from None
        return {"_tag": "Success", "value": jsonable}

    def failure_body(self, error: BaseException) -> dict[str, Any]:
        """The body failing the deferred with `error`, one of its declared errors.

        Raises:
            InvalidArgumentError: `error` is not one of the deferred's declared errors.
        """
        if not isinstance(error, self.deferred.codec.error_types):
            msg = (
                f"deferred {self.deferred.name!r} declares no error {type(error).__name__}; "
                "over HTTP it can fail only with a declared error"
            )
            raise InvalidArgumentError(msg)
        return {"_tag": "Failure", "error": self.errors.encode(error)}

    def error_of(self, data: dict[str, Any]) -> BaseException:
        """The declared error a failure body names.

        Raises:
            DeferredValueError: It names none of the deferred's errors, or its fields do not fit.
        """
        try:
            error = self.errors.decode(data)
        except pydantic.ValidationError as err:
            raise DeferredValueError(self.deferred.name, _errors_of(err), str(err)) from None
        if error is None:
            declared = sorted(self.errors.classes)
            msg = f"error {data.get('_tag')!r} is not among the declared errors {declared}"
            detail = [{"type": "unknown_error", "loc": ["error", "_tag"], "msg": msg}]
            raise DeferredValueError(self.deferred.name, detail, msg)
        return error


def _errors_of(err: Exception) -> list[Any]:
    if isinstance(err, pydantic.ValidationError):
        return cast("list[Any]", jsonable(err.errors(include_url=False)))
    return []


def jsonable(value: Any) -> Any:
    """`value` as JSON-ready data; what JSON cannot hold (bytes, say) becomes its `str`."""
    return to_jsonable_python(value, fallback=str)


# Problems: plait's own errors ---------------------------------------------------------------

# The status each error of plait's own is answered with; the first class that matches wins.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ProxyError, 0),  # its own `status`
    (MalformedMessage, 422),  # a payload refused before it was sent (a reply's is a Die)
    (AlreadyProcessingMessage, 409),
    # Refused before it was taken: a retry may find room, or the shard's new owner.
    (MailboxFull, 503),
    (EntityNotAssignedToRunner, 503),
    (RunnerUnavailable, 503),
    (RunnerNotRegistered, 503),
    (PayloadError, 422),
    (DeferredValueError, 422),
    (MalformedTokenError, 400),
    (DeferredTokenError, 404),
    (UnknownExecutionError, 404),
    (WorkflowNotImplementedError, 501),
    (EngineClosedError, 503),
    (EngineFencedError, 503),
    (NoEngineError, 503),
    (InvalidArgumentError, 400),
)


def _proxy_error(cls: type[ProxyError], problem: Problem, *_: str) -> ProxyError:
    return cls(problem.message, problem.errors)


# Errors the client raises again as themselves, by their tag.
_BY_TAG: dict[str, Callable[[Problem, str, str], BaseException]] = {
    "PayloadError": lambda p, wf, _: PayloadError(wf, p.errors, p.message),
    "DeferredValueError": lambda p, _, d: DeferredValueError(d, p.errors, p.message),
    "MalformedTokenError": lambda p, *_: MalformedTokenError(p.message),
    "DeferredTokenError": lambda p, *_: DeferredTokenError(p.message),
    "UnknownExecutionError": lambda p, *_: UnknownExecutionError(p.message),
    "WorkflowNotImplementedError": lambda p, *_: WorkflowNotImplementedError(p.message),
    "JournalDecodeError": lambda p, *_: JournalDecodeError(p.message),
    "SuspendedRetryExhaustedError": lambda p, *_: SuspendedRetryExhaustedError(p.message),
    "InvalidArgumentError": lambda p, *_: InvalidArgumentError(p.message),
    "MalformedMessage": lambda p, *_: MalformedMessage(p.message, p.errors),
    "AlreadyProcessingMessage": lambda p, *_: AlreadyProcessingMessage(p.message),
    "EntityNotAssignedToRunner": lambda p, *_: EntityNotAssignedToRunner(p.message),
    "RunnerUnavailable": lambda p, *_: RunnerUnavailable(p.message),
    "RunnerNotRegistered": lambda p, *_: RunnerNotRegistered(p.message),
    "PersistenceError": lambda p, *_: PersistenceError(p.message),
    # The entity's address is not in the problem: the client's call fills it in.
    "MailboxFull": lambda p, *_: MailboxFull("", "", p.message),
    **{
        cls.__name__: functools.partial(_proxy_error, cls)
        for cls in (
            InvalidRequestError,
            MalformedRequestError,
            UnauthorizedError,
            ForbiddenError,
            NotFoundError,
            RequestTooLargeError,
            UnsupportedMediaTypeError,
        )
    },
}


def problem_of(error: BaseException) -> tuple[int, Problem]:
    """The status and body the proxy answers an error of plait's own with (500 if unknown)."""
    status = 500
    for cls, code in _STATUS:
        if isinstance(error, cls):
            status = code or cast("ProxyError", error).status
            break
    errors = getattr(error, "errors", None)
    if status == 500 and not isinstance(error, PlaitError):
        # Not plait's: a bug. Its name, not its message (which may hold anything).
        return 500, Problem(_tag="InternalError", message=f"internal error: {type(error).__name__}")
    message = error.message if isinstance(error, ProxyError) else str(error)
    details = jsonable(errors) if isinstance(errors, list) else []
    return status, Problem(_tag=type(error).__name__, message=message, errors=details)


def error_from_problem(
    status: int, body: Any, *, workflow: str = "", deferred: str = ""
) -> BaseException:
    """The error a response of plait's own error stands for, raised again as its class.

    A 503 is `ProxyUnavailableError` (retried by the client) unless the tag says more.
    """
    try:
        problem = Problem.model_validate(body)
    except pydantic.ValidationError:
        if status == 503:
            return ProxyUnavailableError(f"the proxy answered 503: {str(body)[:200]}")
        return UnexpectedResponseError(f"the proxy answered {status}: {str(body)[:200]}")
    make = _BY_TAG.get(problem.tag)
    if make is not None:
        return make(problem, workflow, deferred)
    if status == 503:
        return ProxyUnavailableError(f"{problem.tag}: {problem.message}")
    return UnexpectedResponseError(f"the proxy answered {status} {problem.tag}: {problem.message}")
