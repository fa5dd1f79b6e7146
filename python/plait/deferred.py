"""Durable deferreds (results completed from outside a workflow) and durable clocks."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Generator, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, overload

import pydantic
from pydantic_core import PydanticSerializationError
from typing_extensions import TypeVar

from plait import _context
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
        return encode_deferred_token(run.execution.workflow.name, run.execution.id, self.name)

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
        seq = run.position()
        stored = run.deferreds.get(self.name)
        if stored is not None:
            if isinstance(awaitable, Activity):
                run.key_of(awaitable.name, _context.current_attempt.get(), consume=True)
            _close_unused([awaitable])
            return run.decode(self.codec, stored).unwrap()  # type: ignore[no-any-return]
        race = _context.current_race.get()
        scope = race if race is not None and race.run is run else _engine._Race(run, 1, seq)
        token = _context.current_race.set(scope)
        try:
            outcome: Exit = Success(await awaitable)
        except Exception as exc:
            if run.fatal is not None:
                raise
            outcome = Failure(exc)
        except BaseException as exc:
            if run.fatal is not None or _engine.passes_through(exc):
                raise  # the run suspends, is interrupted or closes: nothing to store
            outcome = _engine.unexpected(f"{self.name}.into()", exc)
        finally:
            _context.current_race.reset(token)
        if run.suspended:  # the awaitable ignored the suspension: no result (Effect's rule)
            return outcome.unwrap()  # type: ignore[no-any-return]
        encoded, outcome = self.codec.settle(outcome)
        stored = await run.engine.store_race(run.execution.id, self.name, encoded)
        if stored != encoded:  # completed from outside meanwhile: the first result stays
            encoded, outcome = stored, run.decode(self.codec, stored)
        run.deliver(self.name, encoded)
        return outcome.unwrap()  # type: ignore[no-any-return]

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
        deferred_name = f"raceAll/{name}"
        codec = ExitCodec(f"race {name}", success, error)
        branches = list(awaitables)
        seq = run.position()
        stored = run.deferreds.get(deferred_name)
        if stored is not None:
            # The first run's activity branches each used their name once: so does the replay.
            attempt = _context.current_attempt.get()
            for branch in branches:
                if isinstance(branch, Activity):
                    run.key_of(branch.name, attempt, consume=True)
            _close_unused(branches)
            return run.decode(codec, stored).unwrap()
        if not branches:
            msg = f"race_all({name!r}) needs at least one awaitable"
            raise ValueError(msg)
        race = _engine._Race(run, len(branches), seq)
        loop = asyncio.get_running_loop()
        tasks = []
        for branch in branches:
            ctx = contextvars.copy_context()
            ctx.run(_context.current_race.set, race)
            tasks.append(loop.create_task(_await(branch), context=ctx))
        outcome: Exit | None = None
        try:
            pending: set[asyncio.Task[Any]] = set(tasks)
            first_failure: BaseException | None = None
            while pending and outcome is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in (t for t in tasks if t in done):
                    failure = asyncio.CancelledError() if task.cancelled() else task.exception()
                    if failure is None:
                        outcome = Success(task.result())
                        break
                    if run.fatal is not None:
                        raise run.fatal
                    first_failure = first_failure or failure
                    race.failed += 1
                    race.check()
            if outcome is None:
                assert first_failure is not None
                outcome = Failure(first_failure)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        encoded, outcome = codec.settle(outcome)
        stored = await run.engine.store_race(run.execution.id, deferred_name, encoded)
        if stored != encoded:  # another run stored its outcome first
            encoded, outcome = stored, run.decode(codec, stored)
        run.deferreds[deferred_name] = encoded
        return outcome.unwrap()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _close_unused(awaitables: list[Awaitable[Any]]) -> None:
    for awaitable in awaitables:
        close = getattr(awaitable, "close", None)
        if asyncio.iscoroutine(awaitable) and close is not None:
            close()


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
            await in_memory_sleep_activity(f"DurableClock/{name}", length, run.engine)
            return
        key = run.key_of(f"DurableClock/{name}", 0, consume=True)
        deferred_name = key.rsplit("/", 1)[0]
        if deferred_name not in run.deferreds:
            if run.interrupting:
                await run.stop_here()
            await run.engine.schedule_clock(run.execution.id, deferred_name, length)
        await run.deferred_value(deferred_name)
