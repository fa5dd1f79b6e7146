"""Entities: addressable instances that answer typed RPCs, one request at a time by default.

An entity type has a name and RPCs; an instance is addressed by the type and an entity id,
made on its first request, and passivated when idle. An RPC is *volatile* (answered in
memory, never stored) or *persisted* (the request is stored before it runs, deduplicated by its
primary key, and answered once with a stored reply, across crashes).

Example:
    >>> import asyncio
    >>> import plait
    >>> Greeter = plait.Entity("DocGreeter")
    >>> @Greeter.rpc()
    ... async def greet(ctx: plait.EntityContext, name: str) -> str:
    ...     return f"hello {name} from {ctx.entity_id}"
    >>> async def main() -> str:
    ...     async with plait.Engine.memory():
    ...         return await greet.call("greeter-1", "Ada")
    >>> asyncio.run(main())
    'hello Ada from greeter-1'
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, Protocol, overload

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from typing_extensions import TypeVar

from plait import engine as _engine
from plait._definitions import caller_site
from plait.clocks import milliseconds_ceil, seconds
from plait.cluster.errors import MalformedMessage
from plait.cluster.runtime import EntityContext, define, runtime_of
from plait.exits import ExitCodec
from plait.ids import checked_name
from plait.schedule import Schedule
from plait.schema import adapter

__all__ = ["Entity", "EntityClient", "Rpc", "StreamRpc"]

P = TypeVar("P")
S = TypeVar("S")
StateT = TypeVar("StateT", default=None)
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...] | None


class Rpc(Generic[P, S]):
    """One RPC of an entity type: its handler, schemas and delivery.

    Made by `Entity.rpc`; call it with an entity id and a payload to send a request to that
    instance and get its reply: `await increment.call("counter-7", Increment(by=2))`.
    """

    __slots__ = (
        "codec",
        "entity",
        "handler",
        "is_stream",
        "name",
        "payload_adapter",
        "payload_type",
        "persisted",
        "primary_key",
        "takes_payload",
    )

    def __init__(
        self,
        entity: Entity[Any],
        name: str,
        handler: Callable[..., Any],
        *,
        persisted: bool,
        primary_key: Callable[[Any], str] | None,
        error: ErrorTypes,
    ) -> None:
        self.entity = entity
        self.name = checked_name("an RPC", name)
        self.handler = handler
        self.persisted = persisted
        self.primary_key = primary_key
        hints = _hints(handler)
        params = list(inspect.signature(handler).parameters.values())
        if not params or len(params) > 2:
            msg = (
                f"RPC {entity.name}.{name}: the handler takes the context and at most one "
                f"payload, got {len(params)} parameters"
            )
            raise TypeError(msg)
        self.takes_payload = len(params) == 2
        self.payload_type: object = hints.get(params[1].name, Any) if self.takes_payload else None
        self.payload_adapter = adapter(self.payload_type) if self.takes_payload else None
        success = hints.get("return", Any)
        self.is_stream = inspect.isasyncgenfunction(handler)
        if self.is_stream:
            # `AsyncIterator[T]` (or a generator's): each chunk is one T.
            args = typing.get_args(success)
            success = args[0] if args else Any
        self.codec = ExitCodec(f"RPC {entity.name}.{name}", success, error)

    def __repr__(self) -> str:
        return f"Rpc({self.entity.name}.{self.name})"

    def encode_payload(self, payload: object) -> bytes:
        """The payload as it travels: JSON.

        Raises:
            MalformedMessage: It does not validate against the RPC's payload type.
        """
        if self.payload_adapter is None:
            if payload is not None:
                msg = f"RPC {self.entity.name}.{self.name} takes no payload, got {payload!r}"
                raise MalformedMessage(msg)
            return b"null"
        try:
            value = self.payload_adapter.validate_python(payload)
            return self.payload_adapter.dump_json(value)
        except pydantic.ValidationError as err:
            msg = f"invalid payload for RPC {self.entity.name}.{self.name}: {err}"
            raise MalformedMessage(msg, err.errors(include_url=False)) from None
        except PydanticSerializationError as err:
            msg = f"payload of RPC {self.entity.name}.{self.name} cannot be encoded: {err}"
            raise MalformedMessage(msg) from None

    def decode_payload(self, data: bytes) -> Any:
        """A payload as it arrived.

        Raises:
            MalformedMessage: It no longer matches the RPC's payload type.
        """
        if self.payload_adapter is None:
            return None
        try:
            return self.payload_adapter.validate_json(data)
        except pydantic.ValidationError as err:
            msg = f"payload of RPC {self.entity.name}.{self.name} does not decode: {err}"
            raise MalformedMessage(msg, err.errors(include_url=False)) from None

    @overload
    def call(
        self: Rpc[None, S],
        entity_id: str,
        payload: None = None,
        *,
        discard: bool = False,
        deliver_at: datetime | None = None,
        engine: _engine.Engine | None = None,
    ) -> Awaitable[S]: ...

    @overload
    def call(
        self,
        entity_id: str,
        payload: P,
        *,
        discard: bool = False,
        deliver_at: datetime | None = None,
        engine: _engine.Engine | None = None,
    ) -> Awaitable[S]: ...

    def call(
        self,
        entity_id: str,
        payload: Any = None,
        *,
        discard: bool = False,
        deliver_at: datetime | None = None,
        engine: _engine.Engine | None = None,
    ) -> Awaitable[Any]:
        """Sends the request to instance `entity_id`; await it for its reply.

        With `discard=True` it resolves once a mailbox took the request (for a persisted RPC:
        once stored), without waiting for the reply, to None. Cancelling the wait interrupts
        the request (Effect's client interrupt). A persisted request is saved before it is
        delivered and answered once across crashes; with a `primary_key`, a request with the
        same key gets the first one's reply. `deliver_at` (timezone-aware; persisted RPCs
        only) holds it back until then.

        Raises:
            MalformedMessage: The payload does not validate (nothing is sent).
            MailboxFull: The instance's mailbox (or the runner's residency) is full (volatile
                requests; a persisted one waits in storage instead).
            PersistenceError: A persisted request or its reply could not be stored.
            InvalidArgumentError: `deliver_at` for a volatile RPC, or without a time zone.
        """
        found = _engine.engine_for(engine)
        return runtime_of(found).send(
            self, entity_id, payload, discard=discard, deliver_at=deliver_at
        )


class StreamRpc(Rpc[P, S]):
    """An RPC whose handler is an async generator: its reply is a stream of chunks.

    `stream(entity_id, payload)` gives them as an async iterator; the request holds its
    instance's slot until the stream ends, and leaving the iteration early interrupts it.
    """

    __slots__ = ()

    def stream(
        self,
        entity_id: str,
        payload: P,
        *,
        engine: _engine.Engine | None = None,
    ) -> AsyncIterator[S]:
        """Sends the request to instance `entity_id` and yields its reply's chunks as they come.

        Raises:
            MalformedMessage: The payload does not validate (nothing is sent).
            MailboxFull: The instance's mailbox (or the runner's residency) is full.
        """
        found = _engine.engine_for(engine)
        chunks: AsyncIterator[S] = runtime_of(found).open_stream(self, entity_id, payload)
        return chunks


class EntityClient:
    """The RPCs of one entity instance, as methods: `await client.increment(Increment(by=2))`.

    Each method takes the RPC's payload (none for an RPC without one) and `discard=`.
    `Rpc.call` is the typed way to the same thing.
    """

    __slots__ = ("_engine", "entity", "entity_id")

    def __init__(self, entity: Entity[Any], entity_id: str, engine: _engine.Engine | None) -> None:
        self.entity = entity
        self.entity_id = entity_id
        self._engine = engine

    def __repr__(self) -> str:
        return f"EntityClient({self.entity.name!r}, {self.entity_id!r})"

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        rpc = self.entity.rpcs.get(name)
        if rpc is None:
            msg = f"entity {self.entity.name!r} has no RPC {name!r}"
            raise AttributeError(msg)

        def send(
            payload: object = None, *, discard: bool = False, deliver_at: datetime | None = None
        ) -> Awaitable[Any]:
            return rpc.call(
                self.entity_id,
                payload,
                discard=discard,
                deliver_at=deliver_at,
                engine=self._engine,
            )

        return send


class RpcDecorator(Protocol[StateT]):
    """What `Entity.rpc(...)` returns: makes a handler an `Rpc`, typed by its signature."""

    @overload
    def __call__(self, fn: Callable[[EntityContext[StateT]], Awaitable[S]]) -> Rpc[None, S]: ...

    @overload
    def __call__(self, fn: Callable[[EntityContext[StateT], P], Awaitable[S]]) -> Rpc[P, S]: ...

    @overload
    def __call__(
        self, fn: Callable[[EntityContext[StateT], P], AsyncIterator[S]]
    ) -> StreamRpc[P, S]: ...


class Entity(Generic[StateT]):
    """An entity type: a name, its RPCs, and how its instances run.

    Args:
        name: Unique among entity types; part of every address.
        state: A pydantic model of the instance's durable state (a plait extension): loaded when
            the instance is made, written with the reply of each persisted request, in the same
            transaction. None: no state.
        concurrency: Requests an instance runs at once (1: one after another, Effect's default).
        mailbox_capacity: Requests an instance holds, running and waiting ("unbounded": no
            limit; None: the runner's `entity_mailbox_capacity`, 4,096 by default); above it a
            volatile request fails with `MailboxFull`, a persisted one waits in storage.
        max_idle_time: An instance with nothing to do for this long is passivated ("never":
            kept; None: the runner's `entity_max_idle_time`, a minute by default).
        defect_retry: When a handler dies (raises an undeclared exception), the instance is
            made again and runs its requests again after the next delay of this schedule
            (Effect's fatal defects; default: 0.5 s growing by 1.5 up to 10 s, for ever). When
            the schedule ends, the requests fail with the defect.
        disable_fatal_defects: A handler's defect is its request's reply (a `Defect`), and the
            instance goes on, instead of the restart above.

    Example:
        >>> Counter = Entity("DocCounter", concurrency=1)
        >>> Counter.name
        'DocCounter'
    """

    __slots__ = (
        "__weakref__",
        "concurrency",
        "defect_retry",
        "disable_fatal_defects",
        "mailbox_capacity",
        "max_idle_ms",
        "name",
        "rpcs",
        "state_model",
    )

    def __init__(
        self,
        name: str,
        *,
        state: type[StateT] | None = None,
        concurrency: int = 1,
        mailbox_capacity: int | Literal["unbounded"] | None = None,
        max_idle_time: timedelta | float | Literal["never"] | None = None,
        defect_retry: Schedule | None = None,
        disable_fatal_defects: bool = False,
    ) -> None:
        self.name = checked_name("an entity", name)
        if state is not None and not (isinstance(state, type) and issubclass(state, BaseModel)):
            msg = f"entity {name!r}: state= takes a pydantic model class, got {state!r}"
            raise TypeError(msg)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            msg = f"entity {name!r}: concurrency must be an int of at least 1, got {concurrency!r}"
            raise ValueError(msg)
        if state is not None and concurrency != 1:
            msg = f"entity {name!r}: an entity with state runs one request at a time"
            raise ValueError(msg)
        if mailbox_capacity not in (None, "unbounded") and (
            isinstance(mailbox_capacity, bool)
            or not isinstance(mailbox_capacity, int)
            or mailbox_capacity < 1
        ):
            msg = f"entity {name!r}: mailbox_capacity must be at least 1, 'unbounded' or None"
            raise ValueError(msg)
        self.state_model: type[BaseModel] | None = state
        self.concurrency = concurrency
        self.mailbox_capacity = mailbox_capacity
        self.max_idle_ms: int | Literal["never"] | None
        if max_idle_time is None:
            self.max_idle_ms = None
        elif max_idle_time == "never":
            self.max_idle_ms = "never"
        else:
            self.max_idle_ms = milliseconds_ceil(seconds(max_idle_time))
        self.rpcs: dict[str, Rpc[Any, Any]] = {}
        self.defect_retry = (
            Schedule.exponential(0.5, factor=1.5, max_delay=10.0)
            if defect_retry is None
            else defect_retry
        )
        self.disable_fatal_defects = disable_fatal_defects
        define(self, caller_site(self))

    def __repr__(self) -> str:
        return f"Entity({self.name!r})"

    @overload
    def rpc(
        self,
        *,
        name: str | None = None,
        persisted: bool = False,
        primary_key: Callable[[Any], str] | None = None,
        error: ErrorTypes = None,
    ) -> RpcDecorator[StateT]: ...

    @overload
    def rpc(self, fn: Callable[[EntityContext[StateT]], Awaitable[S]]) -> Rpc[None, S]: ...

    @overload
    def rpc(self, fn: Callable[[EntityContext[StateT], P], Awaitable[S]]) -> Rpc[P, S]: ...

    @overload
    def rpc(
        self, fn: Callable[[EntityContext[StateT], P], AsyncIterator[S]]
    ) -> StreamRpc[P, S]: ...

    def rpc(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        persisted: bool = False,
        primary_key: Callable[[Any], str] | None = None,
        error: ErrorTypes = None,
    ) -> Any:
        """Makes an async function `(ctx, payload) -> result` (or `(ctx) -> result`) an RPC.

        Args:
            fn: The handler (when used as `@entity.rpc` without arguments).
            name: The RPC's name (default: the function's).
            persisted: Store the request before it runs and its reply with it (durable,
                deduplicated by `primary_key`, answered once across crashes).
            primary_key: Payload → the string that identifies the request for deduplication
                (persisted RPCs; default: none, every request is new).
            error: Exception classes the handler may fail with, sent back and raised again as
                themselves; anything else is a `Defect`.
        """
        if primary_key is not None and not persisted:
            msg = f"entity {self.name!r}: primary_key= needs persisted=True"
            raise ValueError(msg)

        def make(handler: Callable[..., Any]) -> Rpc[Any, Any]:
            streams = inspect.isasyncgenfunction(handler)
            if not (streams or inspect.iscoroutinefunction(handler)):
                msg = f"entity {self.name!r}: an RPC handler must be an async function"
                raise TypeError(msg)
            if streams and persisted:
                msg = f"entity {self.name!r}: persisted streaming RPCs are not built yet"
                raise NotImplementedError(msg)
            rpc_name = handler.__name__ if name is None else name
            kind = StreamRpc if streams else Rpc
            made: Rpc[Any, Any] = kind(
                self,
                rpc_name,
                handler,
                persisted=persisted,
                primary_key=primary_key,
                error=error,
            )
            self.rpcs[made.name] = made
            return made

        return make if fn is None else make(fn)

    def client(self, entity_id: str, *, engine: _engine.Engine | None = None) -> EntityClient:
        """The instance `entity_id`'s RPCs as methods (see `EntityClient`)."""
        return EntityClient(self, checked_name("an entity id", entity_id), engine)


def _hints(fn: Callable[..., object]) -> dict[str, object]:
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return dict(getattr(fn, "__annotations__", {}))
