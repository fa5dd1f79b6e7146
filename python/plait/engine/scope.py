"""The workflow scope: finalizers and compensations, run when an execution completes."""

from __future__ import annotations

from typing import Any

from plait.engine.run import Run
from plait.engine.signals import log, passes_through
from plait.exits import Complete, Failure, Success, defect_of
from plait.observability.logs import fields

__all__ = ["close_scope"]


async def close_scope(run: Run, result: Complete[Any]) -> tuple[Complete[Any], bytes]:
    """Runs the scope's finalizers (compensations among them), last added first.

    Each gets the final exit. A finalizer that fails turns a success into a defect; the others
    still run. Returns the final result and its encoding.
    """
    ex = run.execution
    encoded, exit_ = ex.workflow.codec.settle(result.exit)
    if not ex.finalizers:
        return Complete(exit_), encoded
    while ex.finalizers:
        finalizer = ex.finalizers.pop()
        try:
            pending = finalizer(exit_)
            if pending is not None:
                await pending
        except BaseException as exc:
            if passes_through(exc):
                raise
            log.exception(
                "finalizer of execution %s failed",
                ex.id,
                extra=fields(execution_id=ex.id, workflow=ex.workflow.name),
            )
            if isinstance(exit_, Success):
                exit_ = Failure(defect_of(exc))
    encoded, exit_ = ex.workflow.codec.settle(exit_)
    return Complete(exit_), encoded
