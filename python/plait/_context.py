"""Context variables shared by the engine and the workflow API."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plait.engine import Engine, _Race, _Run

current_engine: ContextVar[Engine | None] = ContextVar("plait.engine", default=None)
current_run: ContextVar[_Run | None] = ContextVar("plait.run", default=None)
current_race: ContextVar[_Race | None] = ContextVar("plait.race", default=None)
current_attempt: ContextVar[int] = ContextVar("plait.attempt", default=1)
# The run whose activity body is running here (None in the workflow body itself).
current_activity: ContextVar[_Run | None] = ContextVar("plait.activity", default=None)
