"""The engine's view of a journal store: writes as ops, reads as awaitables.

A write op is a tuple, as `SqlStore.write` takes it:

- `("start", id, workflow, payload, parent)` → None if created, else the stored record
- `("append", id, key, seq, value)` → whether the step result was stored
- `("deferred", id, name, value)` → True stored, False had one, None unknown execution
- `("status", id, status, result)` → False if the execution is complete or unknown
- `("interrupt", id)` → True, False (complete) or None (unknown)
- `("timer", id, name, due_ms)` / `("untimer", id, name)` → whether it changed anything

The memory store applies an op at once and `write` returns its result. A SQL store commits the
ops queued in one loop iteration together (the Rust writer merges concurrent batches into one
transaction too), and `write` returns a future resolved after the commit.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from plait import _bridge
from plait._native import MemoryStore
from plait.errors import ExecutionCompleteError, UnknownExecutionError

if TYPE_CHECKING:
    from plait._native import SqlStore

__all__ = ["Journal", "MemoryJournal", "Record", "Snapshot", "SqlJournal", "Status"]

Op = tuple[Any, ...]
Status = Literal["running", "suspended", "complete"]
# (workflow, payload, parent, status, result, interrupted)
Record = tuple[str, bytes, str | None, str, bytes | None, bool]
Snapshot = tuple[Record, list[tuple[str, int, bytes]], list[tuple[str, bytes]]]


class Journal:
    """A store as the engine uses it."""

    def write(self, op: Op) -> Any:
        """Applies `op`: its result, or a future of it once durable."""
        raise NotImplementedError

    async def snapshot(self, execution_id: str) -> Snapshot | None:
        """The execution with its whole journal, in one read."""
        raise NotImplementedError

    async def execution(self, execution_id: str) -> Record | None:
        """The execution's record."""
        raise NotImplementedError

    async def timers(self) -> list[tuple[str, str, int]]:
        """Every stored timer, earliest first."""
        raise NotImplementedError

    async def with_status(self, status: Status) -> list[str]:
        """Ids of the executions with `status`."""
        raise NotImplementedError

    async def close(self) -> None:
        """Waits for pending writes, then releases the store."""


class MemoryJournal(Journal):
    """The in-process store: every op applies at once."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def write(self, op: Op) -> Any:  # noqa: D102
        store, kind = self.store, op[0]
        try:
            if kind == "append":
                return store.append((op[1:],))[0]
            if kind == "start":
                return store.start(*op[1:])
            if kind == "deferred":
                return store.complete_deferred(*op[1:])
            if kind == "status":
                store.set_status(*op[1:])
                return True
            if kind == "interrupt":
                return store.interrupt(op[1])
            if kind == "timer":
                return store.schedule_timer(*op[1:])
            if kind == "untimer":
                return store.remove_timer(*op[1:])
        except UnknownExecutionError:
            return None if kind in ("deferred", "interrupt") else False
        except ExecutionCompleteError:
            return False
        msg = f"unknown journal op {kind!r}"
        raise ValueError(msg)

    async def snapshot(self, execution_id: str) -> Snapshot | None:  # noqa: D102
        return self.store.snapshot(execution_id)

    async def execution(self, execution_id: str) -> Record | None:  # noqa: D102
        return self.store.execution(execution_id)

    async def timers(self) -> list[tuple[str, str, int]]:  # noqa: D102
        return self.store.timers()

    async def with_status(self, status: Status) -> list[str]:  # noqa: D102
        return self.store.with_status(status)


class SqlJournal(Journal):
    """SQLite or PostgreSQL: ops queued in one loop iteration commit together."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._ops: list[Op] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._commits: set[asyncio.Task[None]] = set()

    def write(self, op: Op) -> asyncio.Future[Any]:  # noqa: D102
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._ops:
            loop.call_soon(self._flush)
        self._ops.append(op)
        self._futures.append(future)
        return future

    def _flush(self) -> None:
        ops, futures = self._ops, self._futures
        self._ops, self._futures = [], []
        task = asyncio.get_running_loop().create_task(self._commit(ops, futures))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit(self, ops: list[Op], futures: list[asyncio.Future[Any]]) -> None:
        store = self.store
        try:
            results = await _bridge.call(lambda bridge: store.write(bridge, ops))
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def snapshot(self, execution_id: str) -> Snapshot | None:  # noqa: D102
        store = self.store
        result: Snapshot | None = await _bridge.call(
            lambda bridge: store.snapshot(bridge, execution_id)
        )
        return result

    async def execution(self, execution_id: str) -> Record | None:  # noqa: D102
        store = self.store
        result: Record | None = await _bridge.call(
            lambda bridge: store.execution(bridge, execution_id)
        )
        return result

    async def timers(self) -> list[tuple[str, str, int]]:  # noqa: D102
        store = self.store
        result: list[tuple[str, str, int]] = await _bridge.call(store.timers)
        return result

    async def with_status(self, status: Status) -> list[str]:  # noqa: D102
        store = self.store
        result: list[str] = await _bridge.call(lambda bridge: store.with_status(bridge, status))
        return result

    async def close(self) -> None:  # noqa: D102
        if self._ops:
            self._flush()
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)
        store = self.store
        await _bridge.call(store.close)
