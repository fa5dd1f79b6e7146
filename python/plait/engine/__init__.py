"""The engine: runs workflow executions by replay over a journal store.

- `core`: the `Engine` (lifecycle, executions, callers, deferred completion, durable timers).
- `work`: takes the work of the Rust work source (executions recovered or woken by a timer).
- `run`: one run's replay, steps, parks and suspension; the interface the public API uses.
- `races`: races and `into`, stored as deferreds. `scope`: finalizers and compensations.
- `listing`: executions as operators see them (listings, counts, timelines).
- `signals`: how user code's exceptions are sorted. `specs`: what the engine needs of the
  public API's objects. `registry`: workflows by name.

Imports run one way: the public API (`plait.workflow`, `plait.activity`, `plait.deferred`)
imports this package, which never imports it back.
"""

from plait.engine.core import Engine, current_engine, engine_for
from plait.engine.listing import (
    ExecutionPage,
    ExecutionStatusName,
    ExecutionSummary,
    ExecutionTimeline,
    TimelineEvent,
)
from plait.engine.races import into, race
from plait.engine.registry import register
from plait.engine.run import (
    Run,
    WorkflowInstance,
    current_attempt,
    current_instance,
    run_state,
)
from plait.engine.signals import passes_through, unexpected

__all__ = [
    "Engine",
    "ExecutionPage",
    "ExecutionStatusName",
    "ExecutionSummary",
    "ExecutionTimeline",
    "Run",
    "TimelineEvent",
    "WorkflowInstance",
    "current_attempt",
    "current_engine",
    "current_instance",
    "engine_for",
    "into",
    "passes_through",
    "race",
    "register",
    "run_state",
    "unexpected",
]
