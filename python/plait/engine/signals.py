"""How a run's user code can end, as the engine sorts it: outcomes to record, and signals.

Every exception user code raises is either an outcome (a declared error or a defect, recorded
like any other result) or one of the few that must go on up: the process stopping, the engine's
own cancellation, and the engine's internal signals below.
"""

from __future__ import annotations

import asyncio
import logging

from plait.exits import Failure

__all__ = [
    "ActivitySuspended",
    "StoredFirst",
    "engine_cancelled",
    "log",
    "passes_through",
    "unexpected",
]

log = logging.getLogger("plait")


class ActivitySuspended(BaseException):
    """Raised in an activity body that awaits a deferred (or a durable clock) with no result.

    As in Effect, such an activity suspends the workflow instead of waiting in memory: its step
    stores nothing and parks, and a later run executes the body again. A `BaseException`, so
    that the body's `except Exception` does not swallow it.
    """


class StoredFirst(Exception):
    """The store kept another result for a step this run made: replay with the stored one.

    First write wins. A run whose step result was not stored must not go on with it: it stops
    without recording anything and a new run replays the journal.
    """

    def __init__(self, execution_id: str, key: str) -> None:
        super().__init__(f"execution {execution_id}: the store kept an earlier result of {key}")


class ShardMoved(Exception):
    """A write of this run was refused: its execution's shard is no longer this runner's.

    On a cluster another runner holds the lease now and runs the execution from its journal;
    this run stops without recording anything, and its callers here wait for that runner's
    result.
    """

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id}: its shard moved to another runner")


def passes_through(exc: BaseException) -> bool:
    """Whether `exc`, raised by user code in a run, goes on up rather than being recorded.

    `KeyboardInterrupt` and `SystemExit` stop the process (asyncio raises them out of its
    loop), `ActivitySuspended` is the engine's, and so is a cancellation (a `CancelledError`,
    or a group of nothing else) while the current task is being cancelled: the run suspends,
    is interrupted or closes. Any other exception is an outcome: a declared error or a `Defect`.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, ActivitySuspended)):
        return True
    return engine_cancelled(exc)


def engine_cancelled(exc: BaseException) -> bool:
    """Whether `exc` is only cancellation, raised while the current task is being cancelled."""
    if isinstance(exc, BaseExceptionGroup):
        if exc.split(asyncio.CancelledError)[1] is not None:
            return False
    elif not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def unexpected(what: str, exc: BaseException) -> Failure:
    """Logs `exc`, which is not an `Exception`, and returns it as the failure of `what`.

    Recorded like any undeclared exception (the codec makes it a `Defect`), so that no run
    ends without an outcome and its callers are never left waiting.
    """
    log.error("%s raised %s; it is recorded as a defect", what, type(exc).__name__, exc_info=exc)
    return Failure(exc)
