"""Durable queues: work items handed to workers, with their results back (Effect's DurableQueue).

A workflow's `await queue.process(payload)` offers an item once and suspends until a worker
completes it; backend code's `await queue.enqueue(payload)` offers one that nobody waits on.
Workers (`queue.worker(handler)`) take items from the store with a claim, run the handler with
bounded concurrency, and mark each item done in the transaction that stores its result.

Delivery is at least once: an item whose worker died is taken again once its claim is void
(`claim_timeout`); an item marked done is never taken again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, Self, overload

import pydantic
from pydantic import BaseModel
from typing_extensions import TypeVar

from plait import engine as _engine
from plait._native import activity_idempotency_key, encode_deferred_token
from plait._native import execution_id as _hash_id
from plait.clocks import milliseconds_ceil, seconds
from plait.errors import InvalidArgumentError, QueuePayloadError, UnknownQueueError
from plait.exits import Exit, ExitCodec, Failure, Success, defect_of
from plait.ids import checked_name
from plait.journal import Op, QueueItem
from plait.schema import payload_model

__all__ = ["DurableQueue", "QueueWorker"]

P = TypeVar("P", bound=BaseModel, default=BaseModel)
S = TypeVar("S", default=Any)
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...] | None
Handler = Callable[[P], Awaitable[S]] | Callable[[P], S]

_log = logging.getLogger("plait.queue")
_queues: weakref.WeakValueDictionary[str, DurableQueue[Any, Any]] = weakref.WeakValueDictionary()

#: How long a take's claim stands unless renewed (its worker renews it every third of this
#: while the handler runs): a worker that died leaves its items for this long.
DEFAULT_CLAIM_TIMEOUT = 60.0
#: How often an idle worker looks at the store for items offered by other processes.
DEFAULT_POLL_INTERVAL = 0.5
#: How long a stopping worker lets the handlers in hand finish.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0


class _ItemDeferred:
    """The deferred of one item, `DurableQueue/<queue>/<id>`, as the engine awaits it."""

    __slots__ = ("codec", "name")

    def __init__(self, name: str, codec: ExitCodec) -> None:
        self.name = name
        self.codec = codec


class _Wake:
    """What an idle worker waits on: an offer here, a handler finishing, or a poll's delay."""

    __slots__ = ("_loop", "_set", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, delay: float | None) -> None:
        """Returns once set (at once if it is), or after `delay` seconds (None: no limit)."""
        if self._set:
            return
        waiter = self._waiter = self._loop.create_future()
        later = None if delay is None else self._loop.call_later(delay, self.set)
        try:
            await waiter
        finally:
            self._waiter = None
            if later is not None:
                later.cancel()


class DurableQueue(Generic[P, S]):
    """A named, typed queue of work items processed by workers.

    Args:
        name: The queue's name: part of every item's id and deferred name.
        payload: A pydantic model class, or a dict `{field: type}` to build one from.
        success: The type of a handler's result (default `None`: no result is kept).
        error: Exception classes a handler may fail with, raised again as themselves where
            the item is processed; anything else a handler raises is a `Defect`.
        idempotency_key: Payload → the string identifying the item (default: the payload's
            JSON). Offering a payload of the same key again offers nothing.

    Example:
        >>> class Email(BaseModel):
        ...     to: str
        >>> Emails = DurableQueue("Emails", payload=Email, success=str,
        ...                       idempotency_key=lambda e: e.to)
        >>> Emails.item_id(Email(to="a@b.c"))
        '93b3e1c064fb3127c5ae8554e924646b'
    """

    @overload
    def __init__(
        self: DurableQueue[P, None],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: None = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: DurableQueue[P, S],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: type[S] = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: DurableQueue[P, Any],
        name: str,
        payload: type[P] | Mapping[str, object] | None = ...,
        success: object = ...,
        error: ErrorTypes = ...,
        idempotency_key: Callable[[P], str] | None = ...,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        payload: type[P] | Mapping[str, object] | None = None,
        success: object = None,
        error: ErrorTypes = None,
        idempotency_key: Callable[[P], str] | None = None,
    ) -> None:
        self.name = checked_name("a durable queue", name)
        self.payload_model: type[P] = payload_model(name, payload)  # type: ignore[assignment]
        self.codec = ExitCodec(f"durable queue {name}", success, error)
        self.idempotency_key: Callable[[P], str] = idempotency_key or _payload_json
        _queues[name] = self

    def __repr__(self) -> str:
        return f"DurableQueue({self.name!r})"

    @staticmethod
    def named(name: str) -> DurableQueue[Any, Any]:
        """The queue defined in this process under `name`.

        Raises:
            UnknownQueueError: No live queue has this name.
        """
        found = _queues.get(name)
        if found is None:
            msg = f"no durable queue named {name!r} is defined in this process"
            raise UnknownQueueError(msg)
        return found

    # Payloads ----------------------------------------------------------------------------

    def validate(self, payload: P | Mapping[str, Any]) -> P:
        """`payload` as the payload model.

        Raises:
            QueuePayloadError: It does not validate; pydantic's details are in `.errors`.
        """
        if isinstance(payload, self.payload_model):
            return payload
        try:
            if isinstance(payload, BaseModel):
                return self.payload_model.model_validate(payload.model_dump())
            return self.payload_model.model_validate(payload)
        except pydantic.ValidationError as err:
            raise QueuePayloadError(self.name, err.errors(include_url=False), str(err)) from None

    def _key(self, payload: P) -> str:
        key = self.idempotency_key(payload)
        if not isinstance(key, str):
            msg = f"durable queue {self.name!r}: idempotency_key must return a str, got {key!r}"
            raise InvalidArgumentError(msg)
        return key

    def item_id(self, payload: P | Mapping[str, Any]) -> str:
        """The id of the item `enqueue(payload)` offers: a hash of the queue name and key."""
        return _hash_id(f"DurableQueue/{self.name}", self._key(self.validate(payload)))

    # Offering ----------------------------------------------------------------------------

    async def process(self, payload: P | Mapping[str, Any]) -> S:
        """Offers `payload` as an item and returns the worker's result (inside a workflow).

        The item's id is Effect's: the activity idempotency key of
        `DurableQueue/<name>/<idempotency key>` in this execution, so replays and restarts
        offer it once. The workflow suspends until a worker completes the item's deferred,
        `DurableQueue/<name>/<id>`; the handler's failure is raised here.

        Raises:
            NotInWorkflowError: Called outside a workflow run.
            QueuePayloadError: The payload does not validate (raised in the workflow).
        """
        run = _engine.run_state(f"{self.name}.process()")
        model = self.validate(payload)
        item_id = activity_idempotency_key(
            run.execution_id, f"DurableQueue/{self.name}/{self._key(model)}"
        )
        deferred_name = f"DurableQueue/{self.name}/{item_id}"
        token = encode_deferred_token(run.workflow_name, run.execution_id, deferred_name)
        await run.queue_offer(self.name, item_id, _encode(model), deferred_name, token)
        result: S = await run.await_deferred(_ItemDeferred(deferred_name, self.codec))
        return result

    async def enqueue(
        self, payload: P | Mapping[str, Any], *, engine: _engine.Engine | None = None
    ) -> str:
        """Offers `payload` as an item nobody waits on (from plain code); returns its id.

        Offering a payload whose key was offered before offers nothing (the id is a hash of
        the queue's name and the key). Durable once this returns.

        Raises:
            QueuePayloadError: The payload does not validate; nothing was offered.
            NoEngineError: No engine is given or current.
        """
        model = self.validate(payload)
        item_id = _hash_id(f"DurableQueue/{self.name}", self._key(model))
        await _engine.engine_for(engine).offer(self.name, item_id, _encode(model), None)
        return item_id

    # Workers -----------------------------------------------------------------------------

    def worker(
        self,
        handler: Handler[P, S],
        *,
        concurrency: int = 1,
        claim_timeout: timedelta | float = DEFAULT_CLAIM_TIMEOUT,
        poll_interval: timedelta | float = DEFAULT_POLL_INTERVAL,
        shutdown_timeout: timedelta | float = DEFAULT_SHUTDOWN_TIMEOUT,
        engine: _engine.Engine | None = None,
    ) -> QueueWorker[P, S]:
        """A worker running `handler(payload)` on this queue's items, `concurrency` at a time.

        Use it as an async context manager (it works while the block runs) or `await
        worker.run()`. A sync handler runs in a worker thread.

        Args:
            handler: Returns the item's result (of the `success` type) or raises.
            concurrency: Items handled at once, at most.
            claim_timeout: How long (a timedelta, or seconds) a claim on an item stands. The
                worker renews the claims of the items in hand every third of it, so handlers
                may run longer; a worker that died leaves its items to be taken again after
                this long (60 s).
            poll_interval: Time between looks at the store while idle; offers made through
                this process's engine wake the worker at once.
            shutdown_timeout: When the worker stops, the time the handlers in hand get to
                finish; those still running are then cancelled and their claims voided, so
                another worker takes their items at once.
            engine: The engine whose store it works on (default: the current one).

        Example:
            >>> async def send(email: Email) -> str:
            ...     return f"sent to {email.to}"
            >>> async def main() -> None:  # doctest: +SKIP
            ...     async with plait.Engine.sqlite("app.db"), Emails.worker(send, concurrency=4):
            ...         await serve_forever()
        """
        return QueueWorker(
            self, handler, concurrency, claim_timeout, poll_interval, shutdown_timeout, engine
        )


class QueueWorker(Generic[P, S]):
    """Takes a queue's items and runs a handler on each (see `DurableQueue.worker`)."""

    def __init__(
        self,
        queue: DurableQueue[P, S],
        handler: Handler[P, S],
        concurrency: int,
        claim_timeout: timedelta | float,
        poll_interval: timedelta | float,
        shutdown_timeout: timedelta | float,
        engine: _engine.Engine | None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            msg = f"a worker's concurrency must be a positive int, got {concurrency!r}"
            raise InvalidArgumentError(msg)
        if seconds(claim_timeout) <= 0 or seconds(poll_interval) <= 0:
            msg = "a worker's claim_timeout and poll_interval must be positive"
            raise InvalidArgumentError(msg)
        if seconds(shutdown_timeout) < 0:
            msg = "a worker's shutdown_timeout must not be negative"
            raise InvalidArgumentError(msg)
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.claim_ms = milliseconds_ceil(seconds(claim_timeout))
        self.poll_interval = seconds(poll_interval)
        self.shutdown_timeout = seconds(shutdown_timeout)
        self._engine = engine
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake: _Wake | None = None
        # A coroutine function, or an object whose `__call__` is one.
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )

    def __repr__(self) -> str:
        return f"QueueWorker({self.queue.name!r}, concurrency={self.concurrency})"

    async def __aenter__(self) -> Self:
        engine = _engine.engine_for(self._engine)
        engine.require_loop()
        self._task = asyncio.get_running_loop().create_task(
            self.run(engine=engine), name=f"plait queue worker {self.queue.name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.stop()
        try:
            await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    def stop(self) -> None:
        """Asks `run` to stop taking items and return once the handlers in hand finish.

        Handlers still running after `shutdown_timeout` are cancelled; their items are taken
        again once their claims are void.
        """
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, engine: _engine.Engine | None = None) -> None:
        """Takes items as slots free up, handles each and completes it, until stopped.

        It stops on `stop()` (the `async with` block's end), when cancelled, or once the
        engine closes. The claims of the items in hand are renewed every third of the claim
        timeout while their handlers run; items in hand when it is cancelled stay claimed, and
        are taken again once their claim is void. Store failures are logged (`plait.queue`)
        and retried at the poll interval.
        """
        found = _engine.engine_for(engine if engine is not None else self._engine)
        found.require_loop()
        journal = found.journal
        assert journal is not None  # started
        wake = self._wake = _Wake(asyncio.get_running_loop())
        self._stopping = False
        found.queue_wake(self.queue.name, wake.set)
        handling: set[asyncio.Task[None]] = set()
        # The items in hand: id -> the instant of the claim this worker holds.
        held: dict[str, int] = {}

        def finished(task: asyncio.Task[None]) -> None:
            handling.discard(task)
            wake.set()

        renewing = asyncio.get_running_loop().create_task(self._renew(found, held))
        stopped = False
        try:
            while not self._stopping and found.running:
                # Cleared before the take: an offer or a finished handler during the take
                # sets it again, and the wait below returns at once.
                wake.clear()
                free = self.concurrency - len(handling)
                if free > 0:
                    now_ms = found.clock.now_ms()
                    try:
                        items = await journal.take(self.queue.name, free, now_ms, self.claim_ms)
                    except Exception:
                        _log.exception("durable queue %s: a take failed", self.queue.name)
                        items = []
                    for item in items:
                        held[item.id] = now_ms
                        task = asyncio.get_running_loop().create_task(
                            self._handle(found, item, held)
                        )
                        handling.add(task)
                        task.add_done_callback(finished)
                    if len(items) == free:
                        continue  # there may be more: take again once a slot frees
                # Idle slots poll; full ones wait for a handler to finish (which wakes).
                idle = self.concurrency - len(handling) > 0
                await wake.wait(self.poll_interval if idle else None)
            stopped = True
        finally:
            found.queue_unwake(self.queue.name, wake.set)
            self._wake = None
            if stopped and handling:
                await asyncio.wait(set(handling), timeout=self.shutdown_timeout)
            abandoned = dict(held)
            for task in handling:
                task.cancel()
            await asyncio.gather(*handling, return_exceptions=True)
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            if stopped and abandoned:
                await self._release(found, abandoned)

    async def _renew(self, engine: _engine.Engine, held: dict[str, int]) -> None:
        """Renews the claims of the items in hand, every third of the claim timeout.

        So a handler may run longer than the claim timeout without its item being taken again;
        only a worker that stopped renewing (it died) loses its items after the timeout. A
        claim found lost (this worker stalled past the timeout, and another took the item) is
        logged; the handler runs on, and the first completion wins.
        """
        journal = engine.journal
        assert journal is not None
        queue = self.queue.name
        while True:
            await asyncio.sleep(self.claim_ms / 3_000)
            if not held:
                continue
            now_ms = engine.clock.now_ms()
            ids = list(held)
            ops = [Op.queue_renew(queue, item_id, held[item_id], now_ms) for item_id in ids]
            try:
                renewed = await journal.write_together(ops)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("durable queue %s: renewing claims failed", queue)
                continue
            for item_id, kept in zip(ids, renewed, strict=True):
                if item_id not in held:
                    continue  # completed meanwhile
                if kept:
                    held[item_id] = now_ms
                else:
                    del held[item_id]
                    _log.warning(
                        "durable queue %s: the claim on item %s was lost (taken again after "
                        "the claim timeout); its handler runs on",
                        queue,
                        item_id,
                    )

    async def _release(self, engine: _engine.Engine, abandoned: dict[str, int]) -> None:
        """Voids this worker's claims on the items whose handlers it cancelled at its stop.

        So another worker takes them at once rather than after the claim timeout: each claim
        moves to instant 0 (long void), if it is still this worker's.
        """
        journal = engine.journal
        if journal is None or not engine.running:
            return  # closed: the claims wait out their timeout
        queue = self.queue.name
        ops = [Op.queue_renew(queue, item_id, at, 0) for item_id, at in abandoned.items()]
        try:
            await journal.write_together(ops)
        except Exception:
            _log.exception("durable queue %s: releasing the claims of a stopped worker", queue)

    async def _handle(self, engine: _engine.Engine, item: QueueItem, held: dict[str, int]) -> None:
        """Runs the handler on `item` and completes it with the outcome, success or failure."""
        try:
            await self._run_item(engine, item, held)
        finally:
            held.pop(item.id, None)

    async def _run_item(
        self, engine: _engine.Engine, item: QueueItem, held: dict[str, int]
    ) -> None:
        queue = self.queue
        outcome: Exit
        try:
            payload = queue.payload_model.model_validate_json(item.payload)
        except pydantic.ValidationError as err:
            outcome = Failure(
                defect_of(QueuePayloadError(queue.name, err.errors(include_url=False), str(err)))
            )
        else:
            try:
                handler: Callable[[P], Any] = self.handler
                if self._is_async:
                    value = await handler(payload)
                else:
                    value = await asyncio.to_thread(handler, payload)
                outcome = Success(value)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                outcome = Failure(err)
        encoded, _ = queue.codec.settle(outcome)
        # No renewal from here: one answered after the done mark would look like a lost claim.
        held.pop(item.id, None)
        try:
            await engine.complete_queue_item(queue.name, item.id, item.token, encoded)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not marked done: taken again once the claim is void.
            _log.exception("durable queue %s: item %s was not completed", queue.name, item.id)


def _payload_json(payload: BaseModel) -> str:
    return payload.model_dump_json()


def _encode(payload: BaseModel) -> bytes:
    return payload.model_dump_json().encode()
