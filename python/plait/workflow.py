"""Workflow definitions: payload and result schemas, the handler, and the calls on executions."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, overload

import pydantic
from pydantic import BaseModel
from typing_extensions import TypeVar

from plait import engine as _engine
from plait._definitions import caller_site, function_site
from plait._native import execution_id as _execution_id
from plait.errors import InvalidArgumentError, JournalDecodeError, PayloadError
from plait.exits import Complete, Exit, ExitCodec, Failure, Suspended
from plait.ids import checked_name
from plait.schedule import Schedule
from plait.schema import model_from_signature, payload_model, return_type

__all__ = ["Workflow", "WorkflowFunction", "add_finalizer", "with_compensation", "workflow"]

P = TypeVar("P", bound=BaseModel, default=BaseModel)
S = TypeVar("S", default=Any)
T = TypeVar("T")
Params = ParamSpec("Params")

Handler = Callable[[Any, str], Awaitable[Any]]
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...] | None


class Workflow(Generic[P, S]):
    """A durable workflow: a name, a payload schema, a result schema and a handler.

    Args:
        name: Unique among workflows (see `implement`); part of every execution id.
        payload: A pydantic model class, or a dict `{field: type}` to build one from.
        success: The type of the result (default `None`: no result is kept).
        error: Exception classes the workflow may fail with, stored and raised again as
            themselves; anything else raised is a `Defect`.
        idempotency_key: Payload → the string that, with the name, identifies the execution
            (default: the payload's JSON).
        suspended_retry: For `execute` callers while the execution is suspended: re-run it
            after each delay, and give up when the schedule ends (default: wait for the
            result without re-running).
        capture_defects: Record an unexpected exception as the workflow's result (default).
            If False, the run fails without a result, and `resume` can run it again.
        suspend_on_failure: Suspend instead of completing when the body fails, keeping the
            cause in `Suspended.cause`; `resume` runs it again.

    Example:
        >>> Greet = Workflow("Greet", payload={"name": str}, success=str,
        ...                  idempotency_key=lambda p: p.name)
        >>> @Greet.implement
        ... async def greet(payload, execution_id: str) -> str:
        ...     return f"hello {payload.name}"
        >>> Greet.execution_id({"name": "Ada"})
        '7abae80e8ecd721cd1c8a2ab35382b13'
    """

    # The overloads give the type of the result: `success=str` makes `Workflow[..., str]`, no
    # `success` makes `Workflow[..., None]`, and a type form that is not a class
    # (`int | None`, `Literal[...]`) `Any`. The payload class (else `BaseModel`) gives `P`.
    @overload
    def __init__(
        self: Workflow[P, None],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: None = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
        suspended_retry: Schedule | None = ...,
        *,
        capture_defects: bool = ...,
        suspend_on_failure: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: Workflow[P, S],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: type[S] = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
        suspended_retry: Schedule | None = ...,
        *,
        capture_defects: bool = ...,
        suspend_on_failure: bool = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: Workflow[P, Any],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: object = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
        suspended_retry: Schedule | None = ...,
        *,
        capture_defects: bool = ...,
        suspend_on_failure: bool = ...,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        payload: type[P] | Mapping[str, object] | None = None,
        success: object = None,
        error: ErrorTypes = None,
        idempotency_key: Callable[[P], str] | None = None,
        suspended_retry: Schedule | None = None,
        *,
        capture_defects: bool = True,
        suspend_on_failure: bool = False,
    ) -> None:
        self.name = checked_name("a workflow", name)
        self.payload_model: type[P] = payload_model(name, payload)  # type: ignore[assignment]
        self.codec = ExitCodec(f"workflow {name}", success, error)
        self.idempotency_key: Callable[[P], str] = idempotency_key or _payload_json
        self.suspended_retry = suspended_retry
        self.capture_defects = capture_defects
        self.suspend_on_failure = suspend_on_failure
        self.handler: Handler | None = None
        # Where the user's code defines it: two workflows of one name are told apart by it.
        self._site = caller_site(self)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r})"

    def implement(
        self, handler: Callable[[P, str], Awaitable[S]]
    ) -> Callable[[P, str], Awaitable[S]]:
        """Registers `handler(payload, execution_id)` as the workflow's body (a decorator).

        Raises:
            DuplicateNameError: Another workflow of this name, defined elsewhere, is still
                referenced. One defined at the same place (a factory called again) is
                replaced.
        """
        if not inspect.iscoroutinefunction(handler):
            msg = f"workflow {self.name!r}: the handler must be an async function"
            raise TypeError(msg)
        _engine.register(self, self._site)  # first: a refused workflow stays unimplemented
        self.handler = handler
        return handler

    # Payloads ----------------------------------------------------------------------------

    def validate(self, payload: P | Mapping[str, Any]) -> P:
        """`payload` as the payload model.

        Raises:
            PayloadError: It does not validate; pydantic's details are in `.errors`.
        """
        if isinstance(payload, self.payload_model):
            return payload
        try:
            if isinstance(payload, BaseModel):
                return self.payload_model.model_validate(payload.model_dump())
            return self.payload_model.model_validate(payload)
        except pydantic.ValidationError as err:
            raise PayloadError(self.name, err.errors(include_url=False), str(err)) from None

    def encode_payload(self, payload: P) -> bytes:
        """The payload as stored: JSON."""
        return payload.model_dump_json().encode()

    def decode_payload(self, data: bytes) -> P:
        """A stored payload.

        Raises:
            JournalDecodeError: It no longer matches the payload model.
        """
        try:
            return self.payload_model.model_validate_json(data)
        except pydantic.ValidationError as err:
            msg = f"workflow {self.name!r}: stored payload no longer matches its model: {err}"
            raise JournalDecodeError(msg) from None

    def execution_id(self, payload: P | Mapping[str, Any]) -> str:
        """The deterministic id of the execution for `payload`.

        Effect's: a hash of the name and the idempotency key.
        """
        model = self.validate(payload)
        key = self.idempotency_key(model)
        if not isinstance(key, str):
            msg = f"workflow {self.name!r}: idempotency_key must return a str, got {key!r}"
            raise InvalidArgumentError(msg)
        return _execution_id(self.name, key)

    # Executions --------------------------------------------------------------------------

    @overload
    async def execute(
        self,
        payload: P | Mapping[str, Any],
        *,
        discard: Literal[False] = ...,
        engine: _engine.Engine | None = ...,
        execution_id: str | None = ...,
    ) -> S: ...
    @overload
    async def execute(
        self,
        payload: P | Mapping[str, Any],
        *,
        discard: Literal[True],
        engine: _engine.Engine | None = ...,
        execution_id: str | None = ...,
    ) -> str: ...

    async def execute(
        self,
        payload: P | Mapping[str, Any],
        *,
        discard: bool = False,
        engine: _engine.Engine | None = None,
        execution_id: str | None = None,
    ) -> Any:
        """Runs the workflow for `payload` and returns its result, or raises its error.

        An execution with the same id is joined instead; a completed one returns its stored
        result without running again. Inside a workflow, this starts a child execution linked
        to the current one.

        Args:
            payload: The payload model, or a dict to validate into one.
            discard: Return the execution id as soon as it is started.
            engine: The engine (default: the current one).
            execution_id: The execution's id, instead of the one computed from the payload
                (as a cron that starts `rss-poll-<feed>-<tick>` with `discard=True` does).
                Executing again with the same id joins that execution.

        Raises:
            PayloadError: The payload does not validate; nothing was started.
            WorkflowNotImplementedError: No handler is registered.
            Interrupted: The execution was interrupted.
            Defect: The workflow failed with an exception it did not declare.
        """
        model = self.validate(payload)
        if execution_id is not None:
            checked_name("an execution id", execution_id)
        return await _engine.engine_for(engine).execute(
            self, model, discard=discard, execution_id=execution_id
        )

    async def poll(
        self, execution_id: str, *, engine: _engine.Engine | None = None
    ) -> Complete[S] | Suspended | None:
        """The execution's result: None while unknown or running."""
        return await _engine.engine_for(engine).poll(self, execution_id)

    async def interrupt(self, execution_id: str, *, engine: _engine.Engine | None = None) -> None:
        """Interrupts the execution.

        It completes as `Interrupted` after running its compensations and finalizers, and
        interrupts its child executions.
        """
        await _engine.engine_for(engine).interrupt(execution_id)

    async def interrupt_unsafe(
        self, execution_id: str, *, engine: _engine.Engine | None = None
    ) -> None:
        """Interrupts the execution at once, cancelling its running body.

        Effect's `interruptUnsafe`. Where `interrupt` lets the current run finish first, this
        cancels the body (and the activity it awaits) now; compensations and finalizers then
        run and the execution completes as `Interrupted`, interrupting its children. See
        `Engine.interrupt_unsafe`.
        """
        await _engine.engine_for(engine).interrupt_unsafe(execution_id)

    async def resume(self, execution_id: str, *, engine: _engine.Engine | None = None) -> None:
        """Runs a suspended execution again (nothing if it is running or complete)."""
        await _engine.engine_for(engine).resume(execution_id)

    if not TYPE_CHECKING:  # only `@workflow`'s workflows are callable, as type checkers see

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            """Refused: only a workflow made by `@workflow` takes arguments; use `execute`."""
            msg = f"workflow {self.name!r} is not callable; use .execute(payload)"
            raise TypeError(msg)


class WorkflowFunction(Workflow[BaseModel, S], Generic[Params, S]):
    """A workflow made of an `async def` by `@workflow`; call it with the function's arguments.

    Calling it executes the workflow with the arguments as the payload, as `execute` does.
    """

    _signature: inspect.Signature

    def __call__(self, *args: Params.args, **kwargs: Params.kwargs) -> Awaitable[S]:
        """Executes the workflow with the function's arguments as the payload.

        Raises:
            PayloadError: The arguments do not fit the function, or do not validate.
        """
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as err:
            raise PayloadError(self.name, [], str(err)) from None
        return self.execute(dict(bound.arguments))


def _payload_json(payload: BaseModel) -> str:
    return payload.model_dump_json()


def workflow(
    name: str | None = None,
    *,
    idempotency_key: Callable[[Any], str] | None = None,
    error: ErrorTypes = None,
    suspended_retry: Schedule | None = None,
    capture_defects: bool = True,
    suspend_on_failure: bool = False,
) -> Callable[[Callable[Params, Awaitable[S]]], WorkflowFunction[Params, S]]:
    """Makes a workflow of an `async def`.

    Its typed parameters are the payload, its return annotation the success type. Calling the
    workflow takes the function's arguments, and type checkers check them.

    A parameter named `execution_id` receives the id and is not part of the payload. Type
    checkers see it among the parameters, so give it a default (`execution_id: str = ""`)
    for callers to leave it out; passing it is refused.

    Example:
        >>> @workflow(name="Add", idempotency_key=lambda p: f"{p.a}+{p.b}")
        ... async def add(a: int, b: int) -> int:
        ...     return a + b
        >>> add.payload_model.model_fields.keys()
        dict_keys(['a', 'b'])
    """

    def wrap(fn: Callable[Params, Awaitable[S]]) -> WorkflowFunction[Params, S]:
        wf_name = name or fn.__name__
        signature = inspect.signature(fn)
        takes_id = "execution_id" in signature.parameters
        model = model_from_signature(f"{wf_name}Payload", fn, frozenset({"execution_id"}))
        fields = tuple(model.model_fields)
        # The handler calls with the payload's fields, by name: not a `Params` call.
        body: Callable[..., Awaitable[S]] = fn
        wf: WorkflowFunction[Params, S] = WorkflowFunction(
            wf_name,
            payload=model,
            success=return_type(fn, Any),
            error=error,
            idempotency_key=idempotency_key,
            suspended_retry=suspended_retry,
            capture_defects=capture_defects,
            suspend_on_failure=suspend_on_failure,
        )
        wf._site = function_site(fn, wf)

        async def handler(payload: BaseModel, execution_id: str) -> S:
            kwargs = {field: getattr(payload, field) for field in fields}
            if takes_id:
                kwargs["execution_id"] = execution_id
            return await body(**kwargs)

        if not inspect.iscoroutinefunction(fn):
            msg = f"@workflow {wf_name!r}: decorate an async function"
            raise TypeError(msg)
        wf.implement(handler)
        params = [p for p in signature.parameters.values() if p.name != "execution_id"]
        wf._signature = signature.replace(parameters=params)
        return wf

    return wrap


def add_finalizer(finalizer: Callable[[Exit], Awaitable[None] | None]) -> None:
    """Runs `finalizer(exit)` once, when the execution completes.

    Not when a run suspends; it gets the final exit. Finalizers run last added first.

    Raises:
        NotInWorkflowError: Called outside a workflow run.
    """
    _engine.run_state("add_finalizer()").add_finalizer(finalizer)


async def with_compensation(step: Awaitable[T], undo: Callable[[T], Awaitable[Any] | None]) -> T:
    """Awaits `step`, and runs `undo(result)` if the execution later fails or is interrupted.

    Compensations run last registered first, with the finalizers.

    Registered once per step even when replays pass the step again: a replay makes the same
    calls in the same order, so the n-th call of every run is the same step.

    Example::

        async def book_trip(trip: Trip, execution_id: str) -> None:
            car = await with_compensation(reserve_car(trip), cancel_car)
            hotel = await with_compensation(reserve_hotel(trip), cancel_hotel)
    """
    run = _engine.run_state("with_compensation()")
    call = run.next_compensation()
    value = await step

    def compensate(exit_: Exit) -> Awaitable[Any] | None:
        return undo(value) if isinstance(exit_, Failure) else None

    run.add_compensation(call, compensate)
    return value
