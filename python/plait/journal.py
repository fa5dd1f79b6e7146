"""The engine's view of a journal store: writes as ops, reads as awaitables.

One `Journal` over `_native.Store`, whatever the backend. A write is an `Op`, made by its
typed constructor, and each op answers:

- `Op.start(id, workflow, payload, parent)` → None if created, else the stored `Execution`
- `Op.append(id, key, seq, value)` → whether the step result was stored
- `Op.deferred(id, name, value)` → True stored, False had one, None unknown execution
- `Op.status(id, status, result)` → False if the execution is complete or unknown
- `Op.interrupt(id)` → True, False (complete) or None (unknown)
- `Op.timer(id, name, due_ms)` / `Op.untimer(id, name)` → whether it changed anything
- `Op.offer(queue, id, payload, token)` / `Op.queue_done(queue, id)` → whether it changed
  anything (a durable queue's item stored, marked done)

An op the store refuses (a NUL in a name, say) fails alone with `InvalidArgumentError`; the
store applies the others.

A durable store commits the ops queued in one loop iteration together (its writer merges
concurrent batches into one transaction too), and a write resolves after the commit. The memory
store answers at once: its writes and reads cost no event-loop round trip.
"""

from __future__ import annotations

import asyncio
import functools
import time
import types
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from plait import _bridge
from plait._native import (
    Execution,
    Filter,
    History,
    Op,
    Page,
    QueueItem,
    Snapshot,
    Store,
    Timer,
)
from plait.observability import tracing
from plait.observability.metrics import metrics

if TYPE_CHECKING:
    from plait._native import AsyncBridge

__all__ = [
    "FLUSH_AT",
    "Batch",
    "Execution",
    "Filter",
    "History",
    "Journal",
    "Op",
    "Page",
    "QueueItem",
    "Snapshot",
    "Status",
    "Timer",
]

R = TypeVar("R")
#: A batch goes to the store once it holds this many ops, without waiting for the end of the
#: loop iteration: the writer commits the first ops while the loop produces the rest (the Rust
#: writer merges what queues meanwhile into its next transaction). With 1,000 workflows in
#: flight, sending everything at the end of the iteration made the loop and the writer take
#: turns; sending every 128 ops let them overlap (SQLite: ~10,000 -> ~13,000 workflows/s, and
#: the loss at a million journal rows went from ~20% to within the noise).
FLUSH_AT = 128
Status = Literal["running", "suspended", "complete"]
#: Every timer: `timers_between` over every due instant a store can hold.
_ALL_TIMERS = (-1, 2**63 - 1)


class Batch:
    """Ops sent to the store in one call.

    The ops of one loop iteration, or one op the memory store answered at once. Callers never
    await it (a cancelled waiter would cancel it for everyone): `Journal.wait` gives each one a
    future of its own. `results` holds one result per op once `done`; an op the store refused
    has its exception in its place.
    """

    __slots__ = ("callbacks", "done", "error", "results", "waiters")

    def __init__(self, results: list[Any] | None = None) -> None:
        self.done = results is not None
        self.results: list[Any] = results or []
        # Why the whole batch failed (nothing of it is durable).
        self.error: BaseException | None = None
        self.waiters: list[tuple[asyncio.Future[Any], int | slice]] = []
        self.callbacks: list[tuple[Callable[[list[Any] | BaseException], None], slice]] = []

    def error_of(self, index: int) -> BaseException | None:
        """Why op `index` failed, or None if it is durable."""
        if self.error is not None:
            return self.error
        result = self.results[index]
        return result if isinstance(result, BaseException) else None

    def deliver(self, future: asyncio.Future[Any], index: int | slice) -> None:
        """Resolves `future` with op `index`'s result, or fails it with why the op failed.

        A slice of ops: the list of their results, or the first failure.
        """
        error = self.error
        if error is None:
            result = self.results[index]
            if isinstance(index, slice):
                error = _first_error(result)
            elif isinstance(result, BaseException):
                error = result
            if error is None:
                future.set_result(result)
                return
        future.set_exception(error)

    def settle(self, results: list[Any], error: BaseException | None = None) -> None:
        """Records the outcome and resolves the waiters."""
        self.done, self.results, self.error = True, results, error
        for future, index in self.waiters:
            if not future.done():
                self.deliver(future, index)
        self.waiters.clear()
        callbacks, self.callbacks = self.callbacks, []
        for then, ops in callbacks:
            answered = results[ops] if error is None else []
            failed = error if error is not None else _first_error(answered)
            then(answered if failed is None else failed)


def _first_error(results: list[Any]) -> BaseException | None:
    """The first exception among `results`: an op the store refused."""
    for result in results:
        if isinstance(result, BaseException):
            return result
    return None


def _answered(results: list[Any]) -> list[Any]:
    """`results` of ops answered at once; raises why the first refused op failed."""
    error = _first_error(results)
    if error is not None:
        raise error
    return results


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


@types.coroutine
def _now(value: R) -> Generator[Any, None, R]:
    """`value`, as an awaitable: an answer the memory store gave at once.

    A generator-based coroutine: as cheap to await as an `async def` one, and, like a future, it
    may be dropped unawaited (the write is done either way) without a warning.
    """
    return value
    yield  # a generator that returns at once


#: What the memory store answers to most ops it applies at once, as settled batches. A settled
#: batch never changes, so these are shared rather than made per op.
_TRUE, _FALSE = Batch([True]), Batch([False])


class _CommitWatch:
    """A commit batch's span and timing, when tracing or metrics are on."""

    __slots__ = ("ops", "span", "started")

    def __init__(self, ops: int, span: Any) -> None:
        self.ops = ops
        self.span = span
        self.started = time.perf_counter()

    @staticmethod
    def start(ops: int) -> _CommitWatch | None:
        """Watches a batch of `ops` operations handed to the store; None if nothing records."""
        if tracing.tracer() is None and metrics() is None:
            return None
        # A batch serves many executions: its span is a root of its own, not any one's child.
        span = tracing.start_span(
            "plait.store.commit", {"plait.store.ops": ops}, parent=tracing.empty_context()
        )
        return _CommitWatch(ops, span)

    def done(self, ok: bool, value: Any) -> None:
        """The store answered."""
        counters = metrics()
        if counters is not None:
            counters.commit_batch_ops.observe(self.ops)
            counters.commit_duration.observe(time.perf_counter() - self.started)
        if self.span is not None:
            if ok:
                tracing.end_span(self.span, "committed")
            else:
                tracing.end_span(self.span, "failed", value)


class Journal:
    """A store as the engine uses it.

    Writes of one loop iteration go to the store in one call (`FLUSH_AT` ops at most), reads of
    one kind in one call too. The memory store (`store.immediate`) answers every call at once:
    a write is applied when made and a read needs no loop iteration. `loop` is needed for a
    store that answers later, and may come after construction (`bind`).
    """

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.store = store
        #: Whether the store answers every call at once (the memory store).
        self.immediate = store.immediate
        self._ops: list[Op] = []
        self._batch: Batch | None = None
        self._committing = 0
        self._idle: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshots: _Reads[Snapshot | None] | None = None
        self._executions: _Reads[Execution | None] | None = None
        if loop is not None:
            self.bind(loop)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Uses `loop` for the batches and reads from now on."""
        store = self.store
        self._loop = loop
        self._snapshots = _Reads(loop, lambda bridge, ids: store.snapshots(bridge, ids))
        self._executions = _Reads(loop, lambda bridge, ids: store.executions(bridge, ids))

    # Writes --------------------------------------------------------------------------------

    def queue(self, op: Op) -> tuple[Batch, int]:
        """Queues `op` for this iteration's commit: its batch and its index there.

        The memory store applies it at once: the batch is done when returned.
        """
        if self.immediate:
            result = self.store.write_now((op,))[0]
            if result is True:
                return _TRUE, 0
            if result is False:
                return _FALSE, 0
            return Batch([result]), 0
        batch = self._batch
        if batch is None:
            batch = self._new_batch()
        self._ops.append(op)
        index = len(self._ops) - 1
        if index + 1 >= FLUSH_AT:
            self._flush()
        return batch, index

    def write(self, op: Op) -> Awaitable[Any]:
        """Applies `op`: its result once durable."""
        if self.immediate:
            result = self.store.write_now((op,))[0]
            if isinstance(result, BaseException):  # refused
                raise result
            return _now(result)
        return self.wait(*self.queue(op))

    def write_together(self, ops: list[Op]) -> Awaitable[list[Any]]:
        """Applies `ops` in one transaction: their results once durable (or the first failure).

        Never split, whatever `FLUSH_AT` says.
        """
        if self.immediate:
            return _now(_answered(self.store.write_now(ops)))
        batch = self._batch
        if batch is None:
            batch = self._new_batch()
        first = len(self._ops)
        self._ops.extend(ops)
        future = self.wait(batch, slice(first, first + len(ops)))
        if len(self._ops) >= FLUSH_AT:
            self._flush()
        return future

    def write_then(self, ops: list[Op], then: Callable[[list[Any] | BaseException], None]) -> None:
        """Applies `ops` in one transaction and calls `then` with their results once durable.

        With the first refused op's exception, or why the commit failed, in their place. No
        future per op: for many ops whose answers one callback handles (entity messages). The
        memory store calls `then` before returning.
        """
        if self.immediate:
            results = self.store.write_now(ops)
            error = _first_error(results)
            then(results if error is None else error)
            return
        batch = self._batch
        if batch is None:
            batch = self._new_batch()
        first = len(self._ops)
        self._ops.extend(ops)
        batch.callbacks.append((then, slice(first, first + len(ops))))
        if len(self._ops) >= FLUSH_AT:
            self._flush()

    def _new_batch(self) -> Batch:
        assert self._loop is not None, "a journal on a store that answers later needs a loop"
        batch = self._batch = Batch()
        self._loop.call_soon(self._flush)
        return batch

    def wait(self, batch: Batch, index: int | slice) -> asyncio.Future[Any]:
        """A future of the caller's own: op `index`'s result once its batch is durable."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        if batch.done:
            batch.deliver(future, index)
        else:
            batch.waiters.append((future, index))
        return future

    def _flush(self) -> None:
        ops, batch = self._ops, self._batch
        self._ops, self._batch = [], None
        if batch is None:
            return
        assert self._loop is not None
        bridge = _bridge.for_loop(self._loop)
        try:
            token = self.store.write(bridge.native, ops)
        except Exception as err:  # the store takes no writes (closed, or its lease lost)
            batch.settle([], error=err)
            return
        self._committing += 1
        watch = _CommitWatch.start(len(ops))
        bridge.on_result(token, functools.partial(self._committed, batch, watch))

    def _committed(self, batch: Batch, watch: _CommitWatch | None, ok: bool, value: Any) -> None:
        self._committing -= 1
        if watch is not None:
            watch.done(ok, value)
        if ok:
            batch.settle(value)
        else:
            batch.settle([], error=value)
        if not self._committing and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    # Reads ---------------------------------------------------------------------------------

    def snapshot(self, execution_id: str) -> Awaitable[Snapshot | None]:
        """The execution with its whole journal, in one read."""
        if self.immediate:
            return _now(self.store.snapshots_now((execution_id,))[0])
        assert self._snapshots is not None
        return self._snapshots.get(execution_id)

    def execution(self, execution_id: str) -> Awaitable[Execution | None]:
        """The execution's record."""
        if self.immediate:
            return _now(self.store.executions_now((execution_id,))[0])
        assert self._executions is not None
        return self._executions.get(execution_id)

    async def timers(self) -> list[Timer]:
        """Every stored timer, earliest first."""
        timers, _ = await self.timers_between(*_ALL_TIMERS)
        return timers

    async def timers_between(self, after_ms: int, until_ms: int) -> tuple[list[Timer], int | None]:
        """The stored timers due in `(after_ms, until_ms]`, earliest first.

        Also when the first one after `until_ms` is due (None: there is none).
        """
        store = self.store
        if self.immediate:
            return store.timers_between_now(after_ms, until_ms)
        answer: tuple[list[Timer], int | None] = await _bridge.call(
            lambda bridge: store.timers_between(bridge, after_ms, until_ms)
        )
        return answer

    async def with_status(self, status: Status) -> list[str]:
        """Ids of the executions with `status`."""
        store = self.store
        if self.immediate:
            return store.with_status_now(status)
        ids: list[str] = await _bridge.call(lambda bridge: store.with_status(bridge, status))
        return ids

    async def take(self, queue: str, limit: int, now_ms: int, claim_ms: int) -> list[QueueItem]:
        """Up to `limit` pending items of `queue` whose claim is void, each claimed now.

        One store call for the whole batch of items.
        """
        store = self.store
        if self.immediate:
            return store.take_now(queue, limit, now_ms, claim_ms)
        items: list[QueueItem] = await _bridge.call(
            lambda bridge: store.take(bridge, queue, limit, now_ms, claim_ms)
        )
        return items

    # Operators' reads: listings, counts, histories -----------------------------------------

    async def list(
        self, filter: Filter, after: tuple[int, int] | None = None, limit: int = 50
    ) -> Page:
        """A page of the executions passing `filter`, newest first, from just after `after`."""
        store = self.store
        if self.immediate:
            return store.list_executions_now(filter, after, limit)
        page: Page = await _bridge.call(
            lambda bridge: store.list_executions(bridge, filter, after, limit)
        )
        return page

    async def count(self, filter: Filter, cap: int) -> int:
        """How many executions pass `filter`, counted up to `cap`."""
        store = self.store
        if self.immediate:
            return store.count_executions_now(filter, cap)
        counted: int = await _bridge.call(
            lambda bridge: store.count_executions(bridge, filter, cap)
        )
        return counted

    async def history(self, execution_id: str) -> History | None:
        """The execution with its journal, deferred results and timers, with their times."""
        store = self.store
        if self.immediate:
            return store.history_now(execution_id)
        found: History | None = await _bridge.call(
            lambda bridge: store.history(bridge, execution_id)
        )
        return found

    async def close(self) -> None:
        """Waits for pending writes, then releases the store.

        The memory store holds nothing to release, and stays usable.
        """
        if self.immediate:
            return
        if self._ops:
            self._flush()
        if self._committing:
            assert self._loop is not None
            self._idle = self._loop.create_future()
            await self._idle
        store = self.store
        await _bridge.call(store.close)
