"""Recovery: executions found running on start, and timers that fell due.

They are resumed in order by a bounded number of workers (each does a read, then launches a
run), so a restart with 100,000 to resume does not read them all at once.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from plait.engine.signals import log

__all__ = ["RECOVERY_CONCURRENCY", "Recovery"]

#: Executions resumed at once on start and by firing timers (each: a read, then its run).
RECOVERY_CONCURRENCY = 1_000


class Recovery:
    """A queue of executions to resume and timers to fire, and the workers that take them.

    Args:
        spawn: Runs a worker in the background (the engine's tasks).
        resume: Resumes an execution found running.
        fire: Fires the timer `(execution_id, deferred name)`.
    """

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        resume: Callable[[str], Awaitable[object]],
        fire: Callable[[str, str], Awaitable[object]],
    ) -> None:
        self._spawn = spawn
        self._resume = resume
        self._fire = fire
        self._queue: collections.deque[tuple[str, str | None]] = collections.deque()
        self.workers = 0

    def add(self, execution_id: str, timer: str | None = None) -> None:
        """Queues the resumption of an execution, or (with `timer`) the firing of its timer."""
        self._queue.append((execution_id, timer))
        if self.workers < RECOVERY_CONCURRENCY:
            self.workers += 1
            self._spawn(self._work())

    def clear(self) -> None:
        """Drops what is queued (the engine is closing; the store keeps it)."""
        self._queue.clear()

    async def _work(self) -> None:
        try:
            while self._queue:
                execution_id, timer = self._queue.popleft()
                try:
                    if timer is None:
                        await self._resume(execution_id)
                    else:
                        await self._fire(execution_id, timer)
                except Exception:
                    log.exception("recovery of execution %s failed", execution_id)
        finally:
            self.workers -= 1
