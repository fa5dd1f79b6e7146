"""Helpers for the workflow engine tests: letting the event loop run, waiting for a result."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import plait

R = TypeVar("R", plait.Complete[Any], plait.Suspended)


async def settle(rounds: int = 50) -> None:
    """Lets ready callbacks and tasks run for `rounds` loop iterations."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def poll_until(
    workflow: plait.Workflow[Any, Any],
    execution_id: str,
    kind: type[R],
    *,
    engine: plait.Engine | None = None,
    within: float = 10.0,
) -> R:
    """Polls the execution until its result is a `kind`; fails the test if it never is.

    Polls every loop iteration at first, then every millisecond (for worker threads).
    """
    result = None
    deadline = time.monotonic() + within
    rounds = 0
    while time.monotonic() < deadline:
        result = await workflow.poll(execution_id, engine=engine)
        if isinstance(result, kind):
            return result
        rounds += 1
        await asyncio.sleep(0 if rounds < 200 else 0.001)
    msg = f"{workflow.name} {execution_id}: never {kind.__name__}, last poll gave {result!r}"
    raise AssertionError(msg)


def journal_keys(engine: plait.Engine, execution_id: str) -> list[str]:
    """The step keys stored for the execution, in call order."""
    snapshot = engine.store.snapshot(execution_id)
    assert snapshot is not None
    return [key for key, _seq, _value in sorted(snapshot[1], key=lambda entry: entry[1])]


def deferred_names(engine: plait.Engine, execution_id: str) -> set[str]:
    """The names of the deferreds with a stored result in the execution."""
    snapshot = engine.store.snapshot(execution_id)
    assert snapshot is not None
    return {name for name, _value in snapshot[2]}
