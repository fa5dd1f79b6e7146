"""Durable deferreds (results completed from outside a workflow) and durable clocks."""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, overload

import pydantic
from pydantic_core import PydanticSerializationError
from typing_extensions import TypeVar

from plait import engine as _engine
from plait._native import encode_deferred_token, parse_deferred_token
from plait.activity import Activity, in_memory_sleep_activity
from plait.clocks import seconds
from plait.errors import DeferredTokenError, DeferredValueError
from plait.exits import Exit, ExitCodec, Failure, Success
from plait.ids import checked_name

if TYPE_CHECKING:
    from plait.workflow import Workflow

__all__ = ["DurableClock", "DurableDeferred"]

T = TypeVar("T", default=Any)
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...] | None


class DurableDeferred(Generic[T]):
    """A result a workflow waits for, completed by anyone holding its token.

    A webhook, an operator or another workflow can complete it. Awaiting it with no result
    suspends the execution.

    Example:
        >>> Approval = DurableDeferred("Approval", success=bool)
        >>> Approval.name
        'Approval'
    """

    __slots__ = ("codec", "name")

    # As for activities: `success=bool` makes `DurableDeferred[bool]`, no `success` keeps no
    # value (`DurableDeferred[None]`), a type form that is not a class gives `Any`.
    @overload
    def __init__(
        self: DurableDeferred[None],
        name: str,
        success: None = ...,
        error: ErrorTypes = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: DurableDeferred[T],
        name: str,
        success: type[T] = ...,
        error: ErrorTypes = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: DurableDeferred[Any],
        name: str,
        success: object = ...,
        error: ErrorTypes = ...,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        success: object = None,
        error: ErrorTypes = None,
    ) -> None:
        self.name = checked_name("a deferred", name)
        self.codec = ExitCodec(f"deferred {name}", success, error)

    def __repr__(self) -> str:
        return f"DurableDeferred({self.name!r})"

    def __await__(self) -> Generator[Any, None, T]:
        run = _engine.run_state(f"awaiting deferred {self.name!r}")
        return run.await_deferred(self).__await__()

    # Tokens ------------------------------------------------------------------------------

    def token(self) -> str:
        """The token of this deferred in the current execution."""
        run = _engine.run_state(f"{self.name}.token()")
        return encode_deferred_token(run.workflow_name, run.execution_id, self.name)

    def token_from_execution_id(self, workflow: Workflow[Any, Any], execution_id: str) -> str:
        """The token of this deferred in execution `execution_id` of `workflow`."""
        return encode_deferred_token(workflow.name, execution_id, self.name)

    def token_from_payload(self, workflow: Workflow[Any, Any], payload: Any) -> str:
        """The token of this deferred in the execution of `workflow` for `payload`."""
        return self.token_from_execution_id(workflow, workflow.execution_id(payload))

    # Completion --------------------------------------------------------------------------

    async def succeed(self, token: str, value: T, *, engine: _engine.Engine | None = None) -> bool:
        """Completes the deferred with `value`. Returns False if it had a result already."""
        return await self.done(token, Success(value), engine=engine)

    async def fail(
        self, token: str, error: BaseException, *, engine: _engine.Engine | None = None
    ) -> bool:
        """Completes the deferred with `error` (raised where it is awaited)."""
        return await self.done(token, Failure(error), engine=engine)

    async def done(self, token: str, exit: Exit, *, engine: _engine.Engine | None = None) -> bool:
        """Completes the deferred with `exit` and wakes the execution.

        Returns:
            False if the deferred had a result already (the first one stays).

        Raises:
            MalformedTokenError: The token is not a deferred token.
            DeferredTokenError: It names another deferred, an unknown execution, or an
                execution of another workflow.
            DeferredValueError: A success value that the deferred's `success` type does not
                hold; nothing is stored, so a valid completion still works.
        """
        workflow_name, execution_id, name = parse_deferred_token(token)
        if name != self.name:
            msg = f"token is for deferred {name!r}, not {self.name!r}"
            raise DeferredTokenError(msg)
        try:
            encoded = self.codec.encode_checked(exit)
        except pydantic.ValidationError as err:
            raise DeferredValueError(self.name, err.errors(include_url=False), str(err)) from None
        except PydanticSerializationError as err:
            raise DeferredValueError(self.name, [], str(err)) from None
        found = _engine.engine_for(engine)
        return await found.complete_deferred(workflow_name, execution_id, name, encoded)

    # Running into a deferred -------------------------------------------------------------

    async def into(self, awaitable: Awaitable[T]) -> T:
        """Awaits `awaitable` and completes this deferred with its outcome, which it returns.

        Effect's `DurableDeferred.into`: the value, or the failure (a declared error, else a
        `Defect`), is stored as the deferred's result, returned or raised here, and given to
        whoever awaits the deferred. A run that finds the deferred's result stored (by an
        earlier run, or completed from outside with its token) returns it without awaiting
        `awaitable`, which is closed if it is a coroutine. Call it as `deferred.into(step)` or
        `DurableDeferred.into(deferred, step)`.

        The steps awaited inside take one position in the run's call order, as a race's
        branches do, so a replay that skips them keeps later steps in place. An `Activity`
        passed directly keeps its name's numbering on such a replay; steps of another
        awaitable do not (as with `race_all`).

        Raises:
            NotInWorkflowError: Called outside a workflow run.
        """
        run = _engine.run_state(f"{self.name}.into()")
        step = awaitable.name if isinstance(awaitable, Activity) else None
        result: T = await _engine.into(run, self.name, self.codec, awaitable, step)
        return result

    # Races -------------------------------------------------------------------------------

    @staticmethod
    async def race_all(
        name: str,
        awaitables: Iterable[Awaitable[Any]],
        *,
        success: object = Any,
        error: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> Any:
        """Awaits all concurrently; the first to succeed wins, the others are cancelled.

        The outcome is stored as the deferred `raceAll/<name>`, so replays return it at once.

        If every branch fails, the first failure is stored and raised. A branch waiting on a
        deferred with no result does not suspend the workflow while another branch runs.
        """
        checked_name("a race", name)
        run = _engine.run_state(f"race_all({name!r})")
        codec = ExitCodec(f"race {name}", success, error)
        branches = list(awaitables)
        steps = [branch.name if isinstance(branch, Activity) else None for branch in branches]
        return await _engine.race(run, f"raceAll/{name}", codec, branches, steps)


class DurableClock:
    """Durable sleeps: short ones in process, long ones as stored timers."""

    @staticmethod
    async def sleep(
        name: str,
        duration: timedelta | float,
        *,
        in_memory_threshold: timedelta | float = timedelta(seconds=60),
    ) -> None:
        """Sleeps `duration` (a timedelta or seconds) as a workflow step named `name`.

        Up to `in_memory_threshold` (60 s; `<=`) it sleeps in process as the activity
        `DurableClock/<name>`. Longer, it stores a timer and suspends the execution until the
        timer completes the deferred `DurableClock/<name>`; the execution holds no memory
        meanwhile and survives restarts of durable engines. Using one name again in the same
        run gives the next sleep `<name>#2`, `<name>#3`, ...
        """
        checked_name("a clock", name)
        length = seconds(duration)
        run = _engine.run_state(f"DurableClock.sleep({name!r})")
        if length <= 0:
            return
        if length <= seconds(in_memory_threshold):
            await in_memory_sleep_activity(f"DurableClock/{name}", length, run.clock)
            return
        await run.durable_sleep(name, length)
