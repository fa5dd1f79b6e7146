"""Activities: named side-effecting steps whose results are journaled."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, Union, overload

from plait import engine as _engine
from plait._definitions import Definitions, function_site
from plait._native import activity_idempotency_key
from plait.clocks import Clock
from plait.engine import current_attempt as _attempt
from plait.errors import (
    Defect,
    Interrupted,
    InvalidArgumentError,
    JournalDecodeError,
    NonDeterminismError,
)
from plait.exits import Exit, ExitCodec, Failure, Success
from plait.ids import checked_name
from plait.schedule import Schedule
from plait.schema import return_type

__all__ = ["Activity", "activity", "current_attempt"]

T = TypeVar("T")
Params = ParamSpec("Params")
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...] | None

#: Effect v4's policy for activities interrupted from inside: 400 ms x1.5 up to 10 s, 10 times.
INTERRUPT_RETRY = Schedule.exponential(0.4, factor=1.5, max_delay=10.0, times=10)

_NOT_RETRIED = (NonDeterminismError, JournalDecodeError, Interrupted)


def current_attempt() -> int:
    """The attempt number of the activity running now: 1, then 2, 3, ... under `retry`."""
    return _attempt.get()


class Activity(Generic[T]):
    """A named step of a workflow; `await` it inside a workflow run.

    The first run executes `execute()` and stores its result; replays return the stored
    result. Async callables run on the event loop, others in a worker thread.

    Args:
        name: The step's name within the workflow.
        execute: A callable with no arguments, returning the result (or an awaitable of it).
        success: The result's type (default `None`: no result is kept).
        error: Exception classes the step may fail with, stored and raised again as
            themselves; any other exception becomes a `Defect`.
        interrupt_retry: Retries when the body is cancelled from inside (not by the run).
    """

    __slots__ = ("codec", "execute", "interrupt_retry", "is_async", "name")

    # The result is what `success` says, the body's value validated into it: `success=str`
    # makes `Activity[str]`, no `success` keeps no result (`Activity[None]`), and a type form
    # that is not a class (`int | None`, `Literal[...]`) gives `Activity[Any]`.
    @overload
    def __init__(
        self: Activity[None],
        name: str,
        execute: Callable[[], object],
        success: None = ...,
        error: ErrorTypes = ...,
        interrupt_retry: Schedule = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: Activity[T],
        name: str,
        execute: Callable[[], object],
        success: type[T] = ...,
        error: ErrorTypes = ...,
        interrupt_retry: Schedule = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: Activity[Any],
        name: str,
        execute: Callable[[], object],
        success: object = ...,
        error: ErrorTypes = ...,
        interrupt_retry: Schedule = ...,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        execute: Callable[[], object],
        success: object = None,
        error: ErrorTypes = None,
        interrupt_retry: Schedule = INTERRUPT_RETRY,
    ) -> None:
        checked_name("an activity", name)
        if not callable(execute):
            msg = (
                f"activity {name!r}: execute must be a callable with no arguments, got {execute!r}"
            )
            raise TypeError(msg)
        self.name = name
        # Its value (or what it awaits to) is checked at run time, against `success`.
        self.execute: Callable[[], Any] = execute
        self.codec = ExitCodec(f"activity {name}", success, error)
        self.interrupt_retry = interrupt_retry
        self.is_async = inspect.iscoroutinefunction(execute)

    @classmethod
    def _made(
        cls,
        name: str,
        execute: Callable[[], Any],
        codec: ExitCodec,
        is_async: bool,
        interrupt_retry: Schedule,
    ) -> Activity[Any]:
        made = cls.__new__(cls)
        made.name, made.execute, made.codec = name, execute, codec
        made.is_async, made.interrupt_retry = is_async, interrupt_retry
        return made

    def __repr__(self) -> str:
        return f"Activity({self.name!r})"

    def __await__(self) -> Generator[Any, None, T]:
        run = _engine.run_state(f"activity {self.name!r}")
        return run.activity(self, _attempt.get()).__await__()

    async def run_body(self, clock: Clock, *, interrupted: bool = False) -> Exit:
        """Runs the body once (retrying interrupts) and returns how it ended.

        Args:
            clock: The engine's clock, which times the retries.
            interrupted: The body already ran once and was cancelled from inside: that run was
                the first attempt, so this one starts with the first retry's delay.
        """
        delays = self.interrupt_retry.delays()
        while True:
            if interrupted:
                delay = next(delays, None)
                if delay is None:
                    message = f'Activity "{self.name}" interrupted and retry attempts exhausted'
                    return Failure(Defect("asyncio.CancelledError", message))
                await clock.sleep(delay)
            try:
                if self.is_async:
                    value = await self.execute()
                else:
                    value = await asyncio.to_thread(self.execute)
                    if inspect.isawaitable(value):
                        value = await value
                return Success(value)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                interrupted = True
            except Exception as exc:
                return Failure(exc)
            except BaseException as exc:
                if _engine.passes_through(exc):
                    raise
                return _engine.unexpected(f"activity {self.name!r}", exc)

    @staticmethod
    async def retry(
        activity: Activity[T],
        *,
        times: int | None = None,
        schedule: Schedule | None = None,
    ) -> T:
        """Awaits `activity`, retrying its failures with attempts 2, 3, ...

        Declared errors and defects are retried; each attempt is a separate journal entry
        (see `current_attempt`).

        Args:
            activity: The step to run.
            times: Retries with no delay (when no `schedule` is given).
            schedule: Delays between attempts; ends when it runs out.
        """
        if schedule is None:
            if times is None or times < 0:
                msg = f"Activity.retry needs times >= 0 or a schedule, got times={times!r}"
                raise InvalidArgumentError(msg)
            schedule = Schedule.immediate(times)
        run = _engine.run_state(f"Activity.retry({activity.name!r})")
        delays = schedule.delays()
        attempt = 1
        while True:
            token = _attempt.set(attempt)
            try:
                result: T = await run.activity(activity, attempt)
                return result
            except Exception as err:
                if run.stopped or isinstance(err, _NOT_RETRIED):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
            finally:
                _attempt.reset(token)
            attempt += 1
            if not run.has_step(activity.name, attempt):
                await run.clock.sleep(delay)

    @staticmethod
    def idempotency_key(name: str, *, include_attempt: bool = False) -> str:
        """A key for external systems, stable across replays.

        Effect's hash of the execution id and `name` (and the attempt, if `include_attempt`).
        """
        run = _engine.run_state("Activity.idempotency_key()")
        return activity_idempotency_key(
            run.execution_id, name, _attempt.get() if include_attempt else None
        )

    @staticmethod
    async def race_all(name: str, activities: Iterable[Activity[Any]]) -> Any:
        """Runs the activities concurrently; the first to succeed wins.

        The winner is stored as the deferred `raceAll/Activity/<name>`; the others are
        cancelled.
        """
        race_name = checked_name("a race", f"Activity/{name}")
        run = _engine.run_state(f"race_all({race_name!r})")
        steps = list(activities)
        successes = tuple({a.codec.success for a in steps})
        errors = tuple({e for a in steps for e in a.codec.error_types})
        success: object = successes[0] if len(successes) == 1 else Union[successes]  # noqa: UP007
        codec = ExitCodec(f"race {race_name}", success, errors or None)
        names: list[str | None] = [step.name for step in steps]
        return await _engine.race(run, f"raceAll/{race_name}", codec, steps, names)


class ActivityFunction(Generic[Params, T]):
    """A function made into a reusable activity by `@activity`; call it to get an `Activity`.

    The call takes the function's parameters; awaiting the activity gives its result, of the
    function's return type (or of `success=`).
    """

    def __init__(
        self, fn: Callable[Params, object], name: str, codec: ExitCodec, interrupt_retry: Schedule
    ) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.name = name
        self._codec = codec
        self._is_async = inspect.iscoroutinefunction(fn)
        self.interrupt_retry = interrupt_retry

    def __call__(self, *args: Params.args, **kwargs: Params.kwargs) -> Activity[T]:
        execute = functools.partial(self.__wrapped__, *args, **kwargs)
        return Activity._made(self.name, execute, self._codec, self._is_async, self.interrupt_retry)

    def __repr__(self) -> str:
        return f"@activity {self.name!r}"


#: Decorated activities by name: two live functions must not share one (see `activity`).
_decorated: Definitions[ActivityFunction[..., Any]] = Definitions("activity", keep_latest=False)


class _ActivityDecorator(Protocol):
    """What `@activity(...)` without `success=` returns: keeps the function's result type."""

    @overload
    def __call__(self, fn: Callable[Params, Awaitable[T]], /) -> ActivityFunction[Params, T]: ...
    @overload
    def __call__(self, fn: Callable[Params, T], /) -> ActivityFunction[Params, T]: ...


class _ActivityDecoratorOf(Protocol[T]):
    """What `@activity(success=...)` returns: the result has the `success` type."""

    def __call__(self, fn: Callable[Params, object], /) -> ActivityFunction[Params, T]: ...


@overload
def activity(fn: Callable[Params, Awaitable[T]], /) -> ActivityFunction[Params, T]: ...
@overload
def activity(fn: Callable[Params, T], /) -> ActivityFunction[Params, T]: ...
@overload
def activity(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    error: ErrorTypes = ...,
    interrupt_retry: Schedule = ...,
) -> _ActivityDecorator: ...
@overload
def activity(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    success: None,
    error: ErrorTypes = ...,
    interrupt_retry: Schedule = ...,
) -> _ActivityDecoratorOf[None]: ...
@overload
def activity(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    success: type[T],
    error: ErrorTypes = ...,
    interrupt_retry: Schedule = ...,
) -> _ActivityDecoratorOf[T]: ...
@overload
def activity(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    success: object,
    error: ErrorTypes = ...,
    interrupt_retry: Schedule = ...,
) -> _ActivityDecoratorOf[Any]: ...


def activity(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    success: object = ...,
    error: ErrorTypes = None,
    interrupt_retry: Schedule = INTERRUPT_RETRY,
) -> Any:
    """Makes a function a reusable activity.

    Calling it inside a workflow gives an awaitable step. The name defaults to the
    function's qualified name, the success type to its return annotation.

    Raises:
        DuplicateNameError: Another decorated function with the same activity name, defined
            elsewhere, is still referenced. One defined at the same place (a factory called
            again) is replaced.

    Example:
        >>> @activity
        ... async def charge(order_id: str, cents: int) -> str:
        ...     return f"ch_{order_id}"
        >>> charge("o-1", 100)
        Activity('charge')
    """

    def wrap(fn: Callable[..., Any]) -> ActivityFunction[..., Any]:
        step_name = checked_name("an activity", fn.__qualname__ if name is None else name)
        success_type = return_type(fn, Any) if success is ... else success
        codec = ExitCodec(f"activity {step_name}", success_type, error)
        made: ActivityFunction[..., Any] = ActivityFunction(fn, step_name, codec, interrupt_retry)
        _decorated.claim(step_name, made, function_site(fn, made))
        return made

    return wrap if fn is None else wrap(fn)


def in_memory_sleep_activity(name: str, seconds: float, clock: Clock) -> Activity[None]:
    """The activity a short `DurableClock.sleep` runs: a sleep on the engine's `clock`."""

    async def sleep() -> None:
        await clock.sleep(seconds)

    return Activity(name, execute=sleep)
