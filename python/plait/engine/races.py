"""Races of steps and deferreds, and running a step into a deferred, inside a run.

Both store their outcome as a deferred of the execution, so a replay returns it without
running any branch; both take one position in the run's call order, shared by every step
inside them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Sequence
from typing import Any

from plait.engine.run import Race, Run, current_attempt, current_race
from plait.engine.signals import passes_through, unexpected
from plait.exits import Exit, ExitCodec, Failure, Success

__all__ = ["into", "race"]


async def race(
    run: Run,
    deferred_name: str,
    codec: ExitCodec,
    branches: Sequence[Awaitable[Any]],
    step_names: Sequence[str | None],
) -> Any:
    """Awaits `branches` concurrently; the first to succeed wins, the others are cancelled.

    The outcome is stored as deferred `deferred_name`. If every branch fails, the first failure
    is stored and raised. A branch waiting on a deferred with no result does not suspend the
    run while another branch can still win.

    Args:
        run: The current run.
        deferred_name: Where the outcome is stored.
        codec: Encodes the outcome.
        branches: The contenders.
        step_names: Per branch, the step's name if the branch is one step (an activity), so a
            replay that runs no branch still numbers later uses of that name as the first run
            did; None for other awaitables.
    """
    seq = run.position()
    stored = run.deferreds.get(deferred_name)
    if stored is not None:
        # The first run's activity branches each used their name once: so does the replay.
        attempt = current_attempt.get()
        for name in step_names:
            if name is not None:
                run.key_of(name, attempt, consume=True)
        close_unused(branches)
        return run.decode(codec, stored).unwrap()
    if not branches:
        msg = f"{deferred_name} needs at least one awaitable"
        raise ValueError(msg)
    contest = Race(run, len(branches), seq)
    loop = asyncio.get_running_loop()
    tasks = []
    for branch in branches:
        ctx = contextvars.copy_context()
        ctx.run(current_race.set, contest)
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
                contest.branch_failed()
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


async def into(
    run: Run,
    deferred_name: str,
    codec: ExitCodec,
    awaitable: Awaitable[Any],
    step_name: str | None,
) -> Any:
    """Awaits `awaitable` and completes deferred `deferred_name` with its outcome.

    A run that finds the deferred's result stored returns it without awaiting `awaitable`
    (closed if it is a coroutine). `step_name` is the step's name if `awaitable` is one step,
    as for `race`.
    """
    seq = run.position()
    stored = run.deferreds.get(deferred_name)
    if stored is not None:
        if step_name is not None:
            run.key_of(step_name, current_attempt.get(), consume=True)
        close_unused([awaitable])
        return run.decode(codec, stored).unwrap()
    enclosing = current_race.get()
    scope = enclosing if enclosing is not None and enclosing.run is run else Race(run, 1, seq)
    token = current_race.set(scope)
    try:
        outcome: Exit = Success(await awaitable)
    except Exception as exc:
        if run.fatal is not None:
            raise
        outcome = Failure(exc)
    except BaseException as exc:
        if run.fatal is not None or passes_through(exc):
            raise  # the run suspends, is interrupted or closes: nothing to store
        outcome = unexpected(f"{deferred_name}.into()", exc)
    finally:
        current_race.reset(token)
    if run.suspended:  # the awaitable ignored the suspension: no result (Effect's rule)
        return outcome.unwrap()
    encoded, outcome = codec.settle(outcome)
    stored = await run.engine.store_race(run.execution.id, deferred_name, encoded)
    if stored != encoded:  # completed from outside meanwhile: the first result stays
        encoded, outcome = stored, run.decode(codec, stored)
    run.deliver(deferred_name, encoded)
    return outcome.unwrap()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def close_unused(awaitables: Sequence[Awaitable[Any]]) -> None:
    """Closes the coroutines among `awaitables`, which will never be awaited."""
    for awaitable in awaitables:
        close = getattr(awaitable, "close", None)
        if asyncio.iscoroutine(awaitable) and close is not None:
            close()
