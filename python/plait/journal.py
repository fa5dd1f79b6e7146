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
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from plait import _bridge
from plait._native import MemoryStore
from plait.errors import ExecutionCompleteError, UnknownExecutionError

if TYPE_CHECKING:
    from plait._native import AsyncBridge, SqlStore

__all__ = ["Journal", "MemoryJournal", "Record", "Snapshot", "SqlJournal", "Status"]

R = TypeVar("R")
Op = tuple[Any, ...]
#: A batch goes to the store once it holds this many ops, without waiting for the end of the
#: loop iteration: the writer commits the first ops while the loop produces the rest (the Rust
#: writer merges what queues meanwhile into its next transaction). With 1,000 workflows in
#: flight, sending everything at the end of the iteration made the loop and the writer take
#: turns; sending every 128 ops let them overlap (SQLite: ~10,000 -> ~13,000 workflows/s, and
#: the loss at a million journal rows went from ~20% to within the noise).
FLUSH_AT = 128
Status = Literal["running", "suspended", "complete"]
# (workflow, payload, parent, status, result, interrupted)
Record = tuple[str, bytes, str | None, str, bytes | None, bool]
Snapshot = tuple[Record, list[tuple[str, int, bytes]], list[tuple[str, bytes]]]


class Journal:
    """A store as the engine uses it."""

    def write(self, op: Op) -> Any:
        """Applies `op`: its result, or a future of it once durable."""
        raise NotImplementedError

    def write_together(self, ops: list[Op]) -> list[Any]:
        """Applies `ops` in one transaction: their results, or futures of them once durable."""
        raise NotImplementedError

    def snapshot(self, execution_id: str) -> Awaitable[Snapshot | None]:
        """The execution with its whole journal, in one read."""
        raise NotImplementedError

    def execution(self, execution_id: str) -> Awaitable[Record | None]:
        """The execution's record."""
        raise NotImplementedError

    async def timers(self) -> list[tuple[str, str, int]]:
        """Every stored timer, earliest first."""
        raise NotImplementedError

    async def timers_between(
        self, after_ms: int, until_ms: int
    ) -> tuple[list[tuple[str, str, int]], int | None]:
        """The stored timers due in `(after_ms, until_ms]`, earliest first.

        Also when the first one after `until_ms` is due (None: there is none).
        """
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

    def write_together(self, ops: list[Op]) -> list[Any]:  # noqa: D102
        return [self.write(op) for op in ops]

    async def snapshot(self, execution_id: str) -> Snapshot | None:  # noqa: D102
        return self.store.snapshot(execution_id)

    async def execution(self, execution_id: str) -> Record | None:  # noqa: D102
        return self.store.execution(execution_id)

    async def timers(self) -> list[tuple[str, str, int]]:  # noqa: D102
        return self.store.timers()

    async def timers_between(  # noqa: D102
        self, after_ms: int, until_ms: int
    ) -> tuple[list[tuple[str, str, int]], int | None]:
        return self.store.timers_between(after_ms, until_ms)

    async def with_status(self, status: Status) -> list[str]:  # noqa: D102
        return self.store.with_status(status)


class Batch:
    """The ops queued in one loop iteration, committed together.

    Callers never await it (a cancelled waiter would cancel it for everyone): `SqlJournal.wait`
    gives each one a future of its own for one op.
    """

    __slots__ = ("done", "error", "errors", "results", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.results: list[Any] = []
        # Why the whole batch failed, or, per op when some failed alone, why (None: committed).
        self.error: BaseException | None = None
        self.errors: list[BaseException | None] | None = None
        self.waiters: list[tuple[asyncio.Future[Any], int]] = []

    def error_of(self, index: int) -> BaseException | None:
        """Why op `index` failed, or None if it committed."""
        if self.error is not None:
            return self.error
        return None if self.errors is None else self.errors[index]

    def settle(
        self,
        results: list[Any],
        errors: list[BaseException | None] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Records the outcome and resolves the waiters."""
        self.done, self.results, self.errors, self.error = True, results, errors, error
        for future, index in self.waiters:
            if future.done():
                continue
            error = self.error_of(index)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[index])
        self.waiters.clear()


class _Reads(Generic[R]):
    """Reads of one kind asked for in one loop iteration, made in one store call."""

    __slots__ = ("_futures", "_ids", "_loop", "_read")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read: Callable[[AsyncBridge, list[str]], int]
    ) -> None:
        self._loop = loop
        self._read = read
        self._ids: list[str] = []
        self._futures: list[asyncio.Future[R]] = []

    def get(self, execution_id: str) -> asyncio.Future[R]:
        """The read of `execution_id`, made with the others asked for in this iteration."""
        if not self._ids:
            self._loop.call_soon(self._flush)
        future: asyncio.Future[R] = self._loop.create_future()
        self._ids.append(execution_id)
        self._futures.append(future)
        return future

    def _flush(self) -> None:
        ids, futures = self._ids, self._futures
        self._ids, self._futures = [], []
        bridge = _bridge.for_loop(self._loop)
        try:
            token = self._read(bridge.native, ids)
        except Exception as err:
            _fail(futures, err)
            return
        bridge.on_result(token, functools.partial(_resolve, futures))


def _resolve(futures: list[asyncio.Future[Any]], ok: bool, value: Any) -> None:
    if not ok:
        _fail(futures, value)
        return
    for future, result in zip(futures, value, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class SqlJournal(Journal):
    """SQLite or PostgreSQL: ops queued in one loop iteration commit together."""

    def __init__(self, store: SqlStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self._loop = loop
        self._ops: list[Op] = []
        self._batch: Batch | None = None
        self._committing = 0
        self._idle: asyncio.Future[None] | None = None
        self._snapshots: _Reads[Snapshot | None] = _Reads(
            loop, lambda bridge, ids: store.snapshots(bridge, ids)
        )
        self._executions: _Reads[Record | None] = _Reads(
            loop, lambda bridge, ids: store.executions(bridge, ids)
        )

    def write(self, op: Op) -> asyncio.Future[Any]:  # noqa: D102
        return self.wait(*self.queue(op))

    def write_together(self, ops: list[Op]) -> list[asyncio.Future[Any]]:  # noqa: D102
        # One batch, which the writer commits in one transaction: no flush between the ops.
        batch = self._batch
        if batch is None:
            batch = self._new_batch()
        first = len(self._ops)
        self._ops.extend(ops)
        futures = [self.wait(batch, first + n) for n in range(len(ops))]
        if len(self._ops) >= FLUSH_AT:
            self._flush()
        return futures

    def queue(self, op: Op) -> tuple[Batch, int]:
        """Queues `op` for this iteration's commit: its batch and its index there."""
        batch = self._batch
        if batch is None:
            batch = self._new_batch()
        self._ops.append(op)
        index = len(self._ops) - 1
        if index + 1 >= FLUSH_AT:
            self._flush()
        return batch, index

    def _new_batch(self) -> Batch:
        batch = self._batch = Batch()
        self._loop.call_soon(self._flush)
        return batch

    def wait(self, batch: Batch, index: int) -> asyncio.Future[Any]:
        """A future of the caller's own: op `index`'s result once its batch is durable."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if not batch.done:
            batch.waiters.append((future, index))
        elif (error := batch.error_of(index)) is not None:
            future.set_exception(error)
        else:
            future.set_result(batch.results[index])
        return future

    def _flush(self) -> None:
        ops, batch = self._ops, self._batch
        self._ops, self._batch = [], None
        if batch is None:
            return
        native = _bridge.for_loop(self._loop)
        try:
            token = self.store.write(native.native, ops)
        except Exception as err:  # an op the store refuses: the others must not fail with it
            if len(ops) == 1:
                batch.settle([], error=err)
                return
            self._write_each(native, ops, batch)
            return
        self._committing += 1
        native.on_result(token, lambda ok, value: self._committed(batch, ok, value))

    def _write_each(self, native: _bridge.LoopBridge, ops: list[Op], batch: Batch) -> None:
        results: list[Any] = [None] * len(ops)
        errors: list[BaseException | None] = [None] * len(ops)
        left = len(ops)

        def one_done(index: int, ok: bool, value: Any) -> None:
            nonlocal left
            if ok:
                results[index] = value[0]
            else:
                errors[index] = value
            left -= 1
            if left == 0:
                self._committing -= 1
                batch.settle(results, errors)
                self._check_idle()

        self._committing += 1
        for index, op in enumerate(ops):
            try:
                token = self.store.write(native.native, [op])
            except Exception as err:
                one_done(index, False, err)
                continue
            native.on_result(token, functools.partial(one_done, index))

    def _committed(self, batch: Batch, ok: bool, value: Any) -> None:
        self._committing -= 1
        if ok:
            batch.settle(value)
        else:
            batch.settle([], error=value)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._committing and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def snapshot(self, execution_id: str) -> asyncio.Future[Snapshot | None]:  # noqa: D102
        return self._snapshots.get(execution_id)

    def execution(self, execution_id: str) -> asyncio.Future[Record | None]:  # noqa: D102
        return self._executions.get(execution_id)

    async def timers(self) -> list[tuple[str, str, int]]:  # noqa: D102
        store = self.store
        result: list[tuple[str, str, int]] = await _bridge.call(store.timers)
        return result

    async def timers_between(  # noqa: D102
        self, after_ms: int, until_ms: int
    ) -> tuple[list[tuple[str, str, int]], int | None]:
        store = self.store
        result: tuple[list[tuple[str, str, int]], int | None] = await _bridge.call(
            lambda bridge: store.timers_between(bridge, after_ms, until_ms)
        )
        return result

    async def with_status(self, status: Status) -> list[str]:  # noqa: D102
        store = self.store
        result: list[str] = await _bridge.call(lambda bridge: store.with_status(bridge, status))
        return result

    async def close(self) -> None:  # noqa: D102
        if self._ops:
            self._flush()
        if self._committing:
            self._idle = self._loop.create_future()
            await self._idle
        store = self.store
        await _bridge.call(store.close)
