"""The entities of one engine: requests out, deliveries in, handlers run, replies back.

The mailbox bookkeeping is Rust's (the engine's work source: which requests may run now,
residency, passivation); this module runs user code. Requests sent in one event-loop
iteration go to the mailboxes in one `offer` call, and the requests that may run come back
from it at once; replies of one iteration free their slots in one `done` call. Requests that
become runnable later (stored ones, after a restart) and idle instances to drop come through
the engine's work poll (`EntityHost.take`).

Volatile requests are encoded and decoded even in process (Effect's
`simulateRemoteSerialization`), so a payload or reply that would not survive the wire fails
here too.

Persisted requests are saved before delivery, in the journal's group commit (one callback per
commit, not a future per request), claimed by this process and offered to their mailbox once
durable; their final reply, and the instance's durable state when it changed, are saved in one
transaction before the caller hears of it and the slot frees. What is not delivered at once
(held by `deliver_at`, refused by a full mailbox, in flight when a process died) the work
source's storage read loop delivers.

On a runner of a cluster, a persisted request for an entity on another runner is saved claimed
for a short while (`FORWARD_CLAIM_MS`, 30 s) and then sent to its owner over the runners' transport,
which delivers it at once and pushes its reply back (Effect notifies the owner to read its
storage instead: that costs a read, a claim and a reply read per request). Whatever goes wrong
on that way (the owner refuses it, is unreachable, dies, or its shard moves) leaves the
request to storage: its claim is cleared and its owner woken to read it, and its caller reads
the stored reply. A sender that dies before sending it leaves a claim that voids itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import types
from collections.abc import Callable, Coroutine, Generator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol

import pydantic
from pydantic import BaseModel
from typing_extensions import TypeVar

from plait import _bridge
from plait._definitions import Definitions, DefinitionSite
from plait._native import (
    CLAIM_MS,
    Deliver,
    Duplicate,
    Fenced,
    Interrupt,
    Op,
    Passivate,
    Release,
    RemoteReply,
    Routed,
    SnowflakeGenerator,
    shard_id,
)
from plait._native import FORWARD_CLAIM_MS as _FORWARD_CLAIM_MS
from plait.clocks import milliseconds_ceil
from plait.cluster.config import ShardingConfig
from plait.cluster.errors import (
    AlreadyProcessingMessage,
    EntityNotAssignedToRunner,
    MailboxFull,
    MalformedMessage,
    PersistenceError,
    RunnerUnavailable,
)
from plait.cluster.singleton import Singletons
from plait.engine import Engine, current_engine, passes_through, registry, unexpected
from plait.errors import Defect, EngineClosedError, Interrupted, InvalidArgumentError
from plait.exits import Exit, ExitCodec, Failure, Success
from plait.observability import tracing
from plait.observability.logs import fields
from plait.observability.metrics import metrics
from plait.schedule import Schedule

if TYPE_CHECKING:
    from plait._native import Refusal, Sharding, WorkSource

__all__ = [
    "EntityContext",
    "EntityRuntime",
    "EntitySpec",
    "Instance",
    "RpcSpec",
    "all_entities",
    "define",
    "lookup",
    "runtime_of",
]

StateT = TypeVar("StateT", default=None)
#: Saves and replies sent to a durable store as soon as this many are queued (see
#: `EntityRuntime._write_early`).
EARLY_BATCH = 512
#: How long a persisted request saved for another runner, then sent there, stays claimed: if
#: its sender dies before sending it, its owner's regular storage read takes it after this.
FORWARD_CLAIM_MS: int = _FORWARD_CLAIM_MS


class RpcSpec(Protocol):
    """What the runtime needs of an RPC (`plait.cluster.Rpc` has it)."""

    @property
    def name(self) -> str:
        """The RPC's name."""
        ...

    @property
    def entity(self) -> EntitySpec:
        """Its entity type."""
        ...

    @property
    def persisted(self) -> bool:
        """Whether its requests and replies are stored."""
        ...

    @property
    def takes_payload(self) -> bool:
        """Whether the handler takes a payload after the context."""
        ...

    @property
    def codec(self) -> ExitCodec:
        """Encodes its replies."""
        ...

    @property
    def handler(self) -> Callable[..., Any]:
        """`handler(ctx[, payload])`: a coroutine, or for a stream an async generator."""
        ...

    @property
    def is_stream(self) -> bool:
        """Whether the reply is a stream of chunks (the handler is an async generator)."""
        ...

    @property
    def primary_key(self) -> Callable[[Any], str] | None:
        """Payload → the key that deduplicates its persisted requests, if any."""
        ...

    def encode_payload(self, payload: object) -> bytes:
        """The payload as it travels (raises `MalformedMessage` if it does not validate)."""
        ...

    def decode_payload(self, data: bytes) -> Any:
        """A payload as it arrived (raises `MalformedMessage` if it does not decode)."""
        ...


class EntitySpec(Protocol):
    """What the runtime needs of an entity type (`plait.cluster.Entity` has it)."""

    @property
    def name(self) -> str:
        """The entity type's name."""
        ...

    @property
    def rpcs(self) -> dict[str, Any]:
        """Its RPCs by name."""
        ...

    @property
    def concurrency(self) -> int:
        """Requests an instance runs at once."""
        ...

    @property
    def mailbox_capacity(self) -> int | Literal["unbounded"] | None:
        """Requests an instance holds ("unbounded", or None: the runner's default)."""
        ...

    @property
    def max_idle_ms(self) -> int | Literal["never"] | None:
        """Idle time before passivation ("never", or None: the runner's default)."""
        ...

    @property
    def state_model(self) -> type[BaseModel] | None:
        """The model of its durable state, if any."""
        ...

    @property
    def defect_retry(self) -> Schedule:
        """The delays before an instance restarted by a defect runs its requests again."""
        ...

    @property
    def disable_fatal_defects(self) -> bool:
        """Whether a defect is the request's reply instead of restarting the instance."""
        ...


_entities: Definitions[EntitySpec] = Definitions("entity", keep_latest=True)


def define(entity: EntitySpec, site: DefinitionSite) -> None:
    """Makes `entity`, defined at `site`, the one holding its name.

    Raises:
        DuplicateNameError: Another live entity type, defined elsewhere, has the name.
    """
    _entities.claim(entity.name, entity, site)


def lookup(name: str) -> EntitySpec | None:
    """The entity type registered under `name`, if any."""
    return _entities.get(name)


def all_entities() -> list[EntitySpec]:
    """Every entity type defined and still referenced."""
    return _entities.values()


class EntityContext(Generic[StateT]):
    """What a handler knows of the instance it runs in and of the request.

    Attributes:
        entity_type: The entity's type.
        entity_id: The entity's id.
        request_id: The request being handled (a snowflake).
    """

    __slots__ = ("_instance", "entity_id", "entity_type", "request_id")

    def __init__(self, instance: Instance, request_id: int) -> None:
        self._instance = instance
        self.entity_type = instance.entity.name
        self.entity_id = instance.entity_id
        self.request_id = request_id

    @property
    def state(self) -> StateT:
        """The instance's state: the entity's `state` model (None when it declares none)."""
        state: StateT = self._instance.state
        return state

    @state.setter
    def state(self, value: StateT) -> None:
        self._instance.state = value

    def keep_alive(self, enabled: bool = True) -> None:
        """Keeps the instance resident however long it is idle (or lets it go again)."""
        self._instance.keep_alive(enabled)


log = logging.getLogger("plait.cluster")


def runtime_of(engine: Engine) -> EntityRuntime:
    """The entity runtime of `engine`, made when it started (the engine's `entity_host`)."""
    host = engine.entity_host
    if isinstance(host, EntityRuntime):
        return host
    return EntityRuntime(engine)


def _attach(engine: Engine) -> None:
    EntityRuntime(engine)


registry.on_engine_start(_attach)


class Outgoing:
    """A request on its way to a mailbox (what `WorkSource.offer` reads)."""

    __slots__ = (
        "entity_id",
        "entity_type",
        "forwarded",
        "payload",
        "persisted",
        "remote",
        "request_id",
        "saved_ms",
        "tag",
        "to_forward",
        "transported",
    )

    def __init__(
        self,
        request_id: int,
        entity_type: str,
        entity_id: str,
        tag: str,
        payload: bytes,
        persisted: bool,
        forwarded: bool = False,
    ) -> None:
        self.request_id = request_id
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.tag = tag
        self.payload = payload
        self.persisted = persisted
        #: Sent here by another process over the runners' transport: its reply goes back.
        self.forwarded = forwarded
        #: For an entity on another runner.
        self.remote = False
        #: Persisted, for another runner: saved claimed, to go over the transport once saved.
        self.to_forward = False
        #: Sent over the runners' transport: its reply comes back that way (else, for a
        #: remote persisted request, from storage).
        self.transported = False
        #: When it was saved, if it is sent to its owner after its save (the owner checks
        #: that its claim still stands).
        self.saved_ms: int | None = None


class Instance:
    """One resident entity instance: its state, and the requests it is running."""

    __slots__ = ("entity", "entity_id", "loading", "running", "runtime", "saved_state", "state")

    def __init__(self, runtime: EntityRuntime, entity: EntitySpec, entity_id: str) -> None:
        self.runtime = runtime
        self.entity = entity
        self.entity_id = entity_id
        self.state: Any = entity.state_model() if entity.state_model is not None else None
        # The state as last stored (encoded): a reply stores it again only if it changed.
        self.saved_state: bytes | None = None
        # While its stored state is read: the requests that wait for it.
        self.loading: list[Deliver] | None = None
        # The requests it runs now, with their tasks: what a restart replays.
        # (None while its handler takes its first step, before it has a task.)
        self.running: dict[int, tuple[Deliver, asyncio.Task[None] | None]] = {}

    def keep_alive(self, enabled: bool) -> None:
        """Keeps the instance resident however long it is idle (or lets it go again)."""
        self.runtime.source.keep_alive(self.entity.name, self.entity_id, enabled)


_END = Success(None)


class Stream:
    """The chunks of a streaming request, as they arrive; leaving early interrupts it."""

    def __init__(self, reply: asyncio.Future[Any]) -> None:
        # The request's reply: None at the end, or its error; the chunks come by the queue.
        self.reply = reply
        reply.add_done_callback(_retrieved)
        self.queue: asyncio.Queue[Exit] = asyncio.Queue()
        # One chunk in the queue at most: the handler waits until the reader took the last.
        self.credit = asyncio.Semaphore(1)
        self._done = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self.queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        self.credit.release()
        if chunk is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(chunk, Failure):
            self._done = True
            raise chunk.error
        return chunk.unwrap()

    async def aclose(self) -> None:
        """Stops reading: the request is interrupted if its handler still runs."""
        if not self._done:
            self._done = True
            self.reply.cancel()


class _Awaited(asyncio.Future[Any]):
    """A caller's future of a reply: cancelling it (the caller gave up) interrupts the request.

    The interrupt hangs on `cancel` rather than on a done callback, which would be scheduled
    for every reply.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, runtime: EntityRuntime, outgoing: Outgoing
    ) -> None:
        super().__init__(loop=loop)
        self._runtime = runtime
        self._outgoing = outgoing

    def cancel(self, msg: Any = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self._runtime._gave_up(self._outgoing, self)
        return cancelled


class EntityRuntime:
    """The entities of one engine. Made when the engine starts; the engine's `entity_host`.

    Args:
        engine: The started engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = (
            engine.sharding if isinstance(engine.sharding, ShardingConfig) else ShardingConfig()
        )
        self.source: WorkSource = engine.work_source
        resident = self.config.max_resident_entities
        self.source.set_max_resident(None if resident == "unbounded" else resident)
        self.source.set_storage_options(
            _ms(self.config.entity_message_poll_interval.total_seconds()),
            _ms(self.config.entity_registration_timeout.total_seconds()),
        )
        assert engine.journal is not None, "entities run on a started engine"
        self.journal = engine.journal
        self.loop = engine.require_loop()
        # Unique among this engine's requests; the cluster gives runners their machine ids.
        self.ids = SnowflakeGenerator(os.getpid() % 1024)
        self.singletons = Singletons(engine, self.config.shards_per_group)
        if not engine.cluster:
            self.singletons.sync(None)  # a single engine holds every shard
        # Streams being read, by request id: their chunks go to them as the handler yields.
        self._streams: dict[int, Stream] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        # Callers waiting for the final reply of a request: its decoded exit goes to them.
        self.callers: dict[int, list[asyncio.Future[Exit]]] = {}
        self.registered: set[str] = set()
        self._outbox: list[Outgoing] = []
        # Discarded requests: the future resolved once a mailbox took them (or refused them).
        self._taken: dict[int, asyncio.Future[Any]] = {}
        # Requests running now, by id: their delivery and their handler's task.
        self._running: dict[int, tuple[Deliver, asyncio.Task[None] | None]] = {}
        self._finished: list[Deliver] = []
        # Per instance restarted by defects: the delays left before its next restart.
        self._defects: dict[tuple[str, str], Iterator[float]] = {}
        # Persisted requests to save, and replies to save, at the end of this iteration.
        self._saves: list[tuple[Outgoing, Op, int | None]] = []
        self._replies: list[_Reply] = []
        # Persisted requests whose caller gave up: their interrupt reply is (being) stored.
        self._interrupted: set[int] = set()
        # Writes of saves and replies sent to the store and not answered yet, and what a
        # drain waits on until there are none.
        self._writing = 0
        self._written: asyncio.Future[None] | None = None
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: BaseException | None = None
        self._closing = False
        # On a runner of a cluster: its membership, and the requests sent to entities on
        # other runners whose replies come from storage.
        self.sharding: Sharding | None = None
        self._remote: dict[int, Outgoing] = {}
        # Final replies of requests other processes sent here, for the transport.
        self._forwarded_replies: list[tuple[int, bytes]] = []
        # Requests other processes sent here whose caller gave up (their handler is stopped).
        self._interrupted_forwarded: set[int] = set()
        # Requests whose handler is cancelled because their shard moved away.
        self._moving: set[int] = set()
        for entity in all_entities():
            self.register(entity)
        engine.entity_host = self

    # Registration ---------------------------------------------------------------------------

    def register(self, entity: EntitySpec) -> None:
        """Makes the mailboxes take `entity`'s requests, with its options (or the runner's)."""
        capacity = entity.mailbox_capacity
        if capacity is None:
            capacity = self.config.entity_mailbox_capacity
        max_idle = entity.max_idle_ms
        if max_idle is None:
            max_idle = milliseconds_ceil(self.config.entity_max_idle_time.total_seconds())
        self.source.register_entity(
            entity.name,
            entity.concurrency,
            None if capacity == "unbounded" else capacity,
            None if max_idle == "never" else max_idle,
        )
        self.registered.add(entity.name)

    # Sending --------------------------------------------------------------------------------

    def send(
        self,
        rpc: RpcSpec,
        entity_id: str,
        payload: object,
        *,
        discard: bool,
        deliver_at: datetime | None = None,
    ) -> asyncio.Future[Any]:
        """Sends a request: a future of its reply's value (raising its error).

        With `discard`, a future of None once a mailbox took it (a persisted request: once
        stored). `deliver_at` (persisted RPCs only) holds it back until then.

        Cancelling the future (its caller gave up) interrupts the request: dropped if it
        waits, its handler cancelled if it runs; a persisted one gets an interrupt as its
        stored reply.

        Raises:
            MalformedMessage: The payload does not validate, or its primary key cannot be
                made; nothing is sent.
            InvalidArgumentError: `deliver_at` for a volatile RPC.
        """
        return self._send(rpc, entity_id, payload, discard=discard, deliver_at=deliver_at)[1]

    def _send(
        self,
        rpc: RpcSpec,
        entity_id: str,
        payload: object,
        *,
        discard: bool,
        deliver_at: datetime | None = None,
    ) -> tuple[int, asyncio.Future[Any]]:
        if self._closed is not None:
            raise self._closed
        if rpc.entity.name not in self.registered:
            self.register(rpc.entity)
        encoded = rpc.encode_payload(payload)
        span = None
        if tracing.tracer() is not None:
            span = tracing.start_span(
                "plait.entity.send",
                {
                    "plait.entity": rpc.entity.name,
                    "plait.entity_id": entity_id,
                    "plait.rpc": rpc.name,
                    "plait.persisted": rpc.persisted,
                },
                kind="client",
            )
            assert span is not None
            # The handler, on whichever runner, continues this trace.
            encoded = tracing.with_trace(
                encoded, tracing.traceparent_of(tracing.context_with(span))
            )
        if (counters := metrics()) is not None:
            counters.of(counters.entity_requests_sent, rpc.entity.name, rpc.name).inc()
        request_id = self.ids.next_id()
        outgoing = Outgoing(
            request_id, rpc.entity.name, entity_id, rpc.name, encoded, rpc.persisted
        )
        save: tuple[Outgoing, Op, int | None] | None = None
        if rpc.persisted:
            save = self._save_op(rpc, outgoing, payload, deliver_at)
        elif deliver_at is not None:
            msg = f"RPC {rpc.entity.name}.{rpc.name}: deliver_at needs a persisted RPC"
            raise InvalidArgumentError(msg)
        future: asyncio.Future[Any]
        if discard:
            future = self.loop.create_future()
            self._taken[request_id] = future
        else:
            future = _Awaited(self.loop, self, outgoing)
            self.callers[request_id] = [future]
        if save is not None:
            self._saves.append(save)
            self._write_early()
        else:
            self._outbox.append(outgoing)
        self._schedule_flush()
        if span is not None:
            future.add_done_callback(functools.partial(_end_send_span, span))
        return request_id, future

    def _save_op(
        self, rpc: RpcSpec, outgoing: Outgoing, payload: object, deliver_at: datetime | None
    ) -> tuple[Outgoing, Op, int | None]:
        """The op that saves a persisted request, and when it is to be delivered (if held)."""
        key: str | None = None
        if rpc.primary_key is not None:
            try:
                key = str(rpc.primary_key(payload))
            except Exception as err:
                msg = f"primary key of RPC {rpc.entity.name}.{rpc.name} failed: {err!r}"
                raise MalformedMessage(msg) from err
            # Refused here, as the payload's fault, rather than by the store (a failed save).
            if "\0" in key or not _storable_text(key):
                msg = (
                    f"primary key of RPC {rpc.entity.name}.{rpc.name} cannot be stored: "
                    f"{key!r} holds a NUL character or a lone surrogate"
                )
                raise MalformedMessage(msg)
        deliver_ms = None if deliver_at is None else _epoch_ms(deliver_at)
        now = self.engine.clock.now_ms()
        if deliver_ms is not None and deliver_ms <= now:
            deliver_ms = None
        shard = self._shard(outgoing.entity_id)
        # An entity on another runner: saved claimed for a short while and sent to its owner
        # (a client sends it too), or, held by `deliver_at`, unclaimed for its owner's read.
        outgoing.remote = self.engine.cluster and not self.source.owns(outgoing.entity_id)
        outgoing.to_forward = outgoing.remote and deliver_ms is None and self.sharding is not None
        claimed: int | None = now
        if deliver_ms is not None or (outgoing.remote and not outgoing.to_forward):
            claimed = None
        elif outgoing.to_forward:
            claimed = now - CLAIM_MS + FORWARD_CLAIM_MS
            outgoing.saved_ms = now
        op = Op.request(
            outgoing.request_id,
            shard,
            outgoing.entity_type,
            outgoing.entity_id,
            outgoing.tag,
            outgoing.payload,
            key,
            deliver_ms,
            claimed,
        )
        return outgoing, op, deliver_ms

    def _shard(self, entity_id: str) -> str:
        return f"default:{shard_id(entity_id, self.config.shards_per_group)}"

    def open_stream(self, rpc: RpcSpec, entity_id: str, payload: object) -> Stream:
        """Sends a streaming request: its reply's chunks, as an async iterator.

        Raises:
            MalformedMessage: The payload does not validate; nothing is sent.
        """
        if self.engine.cluster and not self.source.owns(entity_id):
            msg = (
                f"{rpc.entity.name}/{entity_id} is on another runner: streaming replies do not"
                " cross runners yet"
            )
            raise EntityNotAssignedToRunner(msg)
        request_id, reply = self._send(rpc, entity_id, payload, discard=False)
        stream = self._streams[request_id] = Stream(reply)
        return stream

    def _gave_up(self, outgoing: Outgoing, future: asyncio.Future[Any]) -> None:
        """A caller's future ended: if it was cancelled, the request is interrupted."""
        if not future.cancelled() or self.callers.get(outgoing.request_id) != [future]:
            return
        del self.callers[outgoing.request_id]
        request_id = outgoing.request_id
        running = self._running.get(request_id)
        if running is not None and running[1] is not None:
            running[1].cancel()  # its handler ends; `_handle` frees the slot
            return
        remote = self._remote.pop(request_id, None)
        if remote is not None and remote.transported and self.sharding is not None:
            # Sent over the transport: its runner is told. (It may also wait in a mailbox
            # here, routed back to this runner: dropped below.)
            self.sharding.interrupt([request_id])
        elif remote is not None:
            self.source.forget_replies([request_id])
        if outgoing.persisted:
            # Wherever it is (being saved, waiting, stored for later), its stored reply is an
            # interrupt from now on: no read delivers it again. After its save, if pending.
            self._interrupted.add(request_id)
            interrupt = _ANY_REPLY.settle(_interrupt(request_id))[0]
            self._replies.append((None, None, interrupt, [Op.reply(request_id, interrupt)]))
            self._schedule_flush()
        if any(o is outgoing for o in self._outbox):
            self._outbox.remove(outgoing)  # not offered yet
            return
        self._run(self.source.drop_request(outgoing.entity_type, outgoing.entity_id, request_id))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Offers the requests of this iteration, frees the slots of its replies, runs what may.

        Persisted requests and replies go to the store first (saves before replies, so an
        interrupt's reply follows its request's save); the memory store answers at once, so
        what it saved is offered in this same call.
        """
        self._flush_scheduled = False
        self._write()
        outbox, finished = self._outbox, self._finished
        self._outbox, self._finished = [], []
        if self._forwarded_replies and self.sharding is not None:
            replies, self._forwarded_replies = self._forwarded_replies, []
            self.sharding.reply(replies)
        ready: list[Deliver] = []
        if finished:
            ready.extend(self.source.done(finished))
        if outbox:
            answers, runnable = self.source.offer(outbox)
            elsewhere: list[Outgoing] = []
            for outgoing, answer in zip(outbox, answers, strict=True):
                if (
                    answer is not None
                    and answer.kind == "NotAssigned"
                    and not outgoing.persisted
                    and not outgoing.forwarded
                    and outgoing.request_id not in self._streams  # streams stay on a runner
                    and self.sharding is not None
                ):
                    elsewhere.append(outgoing)  # on another runner: over the transport
                elif answer is not None:
                    self._refused(outgoing, answer)
                elif (
                    taken := self._taken.pop(outgoing.request_id, None)
                ) is not None and not taken.done():
                    taken.set_result(None)
            if elsewhere:
                self._send_elsewhere(elsewhere)
            ready.extend(runnable)
        self._run(ready)
        # Instances became resident or idle: their passivation moves the next wake-up.
        self.engine.work_changed()

    def _send_elsewhere(self, outgoing: list[Outgoing]) -> None:
        """Volatile requests for entities on other runners: sent over the runners' transport.

        Their replies come as `RemoteReply` work; a discarded one's future resolves when a
        mailbox there took it (`Routed`). Persisted ones too, saved first (nobody waits for
        the reply of one whose caller did not).
        """
        assert self.sharding is not None
        for each in outgoing:
            each.remote = True
            each.transported = True
            self._remote[each.request_id] = each
        discard = [
            o.request_id in self._taken or (o.persisted and o.request_id not in self.callers)
            for o in outgoing
        ]
        self.sharding.send(outgoing, discard)

    def _write(self) -> None:
        """Sends the saves, then the replies, queued so far to the store."""
        if self._saves:
            saves, self._saves = self._saves, []
            ops = [op for _, op, _ in saves]
            self._writing += 1
            self.journal.write_then(ops, functools.partial(self._saved, saves))
        if self._replies:
            replies, self._replies = self._replies, []
            # Every reply, then every state: independent writes, and runs of one kind are
            # applied a run at a time (a statement per run, not per op) on PostgreSQL.
            ops = [reply_ops[0] for *_, reply_ops in replies]
            ops.extend(op for *_, reply_ops in replies for op in reply_ops[1:])
            self._writing += 1
            self.journal.write_then(ops, functools.partial(self._replied, replies))

    def _write_early(self) -> None:
        """Sends what is queued now if it makes a batch (a durable store only).

        The store commits it while the loop runs the rest of this iteration, instead of the two
        taking turns: with 1,000 requests in flight, each commit's answers made one wave of
        work, all of it sent at the end of the iteration.
        """
        if not self.journal.immediate and len(self._saves) + len(self._replies) >= EARLY_BATCH:
            self._write()

    def _saved(self, saves: list[tuple[Outgoing, Op, int | None]], answer: Any) -> None:
        """Persisted requests are durable (or could not be saved): deliver them, or dedup."""
        self._wrote()
        if isinstance(answer, BaseException):
            error = PersistenceError(f"persisted requests could not be saved: {answer}")
            for outgoing, _, _ in saves:
                taken = self._taken.pop(outgoing.request_id, None)
                if taken is not None and not taken.done():
                    taken.set_exception(error)
                self._answer(outgoing.request_id, Failure(error))
            return
        held_until: int | None = None
        remote: list[Outgoing] = []
        forwarded: list[Outgoing] = []
        for (outgoing, _, deliver_ms), result in zip(saves, answer, strict=True):
            request_id = outgoing.request_id
            taken = self._taken.pop(request_id, None)
            if taken is not None and not taken.done():
                taken.set_result(None)
            if isinstance(result, Duplicate):
                self._duplicate(outgoing, result)
            elif request_id in self._interrupted:
                continue
            elif outgoing.to_forward and self.sharding is not None:
                forwarded.append(outgoing)
            elif outgoing.remote:
                remote.append(outgoing)
            elif deliver_ms is None:
                self._outbox.append(outgoing)
            else:
                held_until = deliver_ms if held_until is None else min(held_until, deliver_ms)
        if remote:
            self._await_remote(remote)
        if forwarded:
            self._send_elsewhere(forwarded)
        if held_until is not None:
            self.source.poll_storage(held_until)
            self.engine.work_changed()  # a clock the host moves must come to it
        if self._outbox:
            self._schedule_flush()

    def _await_remote(self, outgoing: list[Outgoing]) -> None:
        """Requests stored for entities on other runners: their callers get the stored reply."""
        waited = [o for o in outgoing if o.request_id in self.callers]
        for each in waited:
            self._remote[each.request_id] = each
        if waited:
            self.source.await_replies([o.request_id for o in waited])

    def _wrote(self) -> None:
        self._writing -= 1
        if not self._writing and self._written is not None and not self._written.done():
            self._written.set_result(None)

    def _duplicate(self, outgoing: Outgoing, found: Duplicate) -> None:
        """A request with the same key is stored: its callers wait for that one's reply."""
        callers = self.callers.pop(outgoing.request_id, [])
        if found.reply is None:
            if callers:
                self.callers.setdefault(found.original, []).extend(callers)
                if self.engine.cluster and found.original not in self._running:
                    # The original may run on another runner: its reply comes from storage
                    # (or over the transport, if this process sent it there).
                    self._remote.setdefault(found.original, outgoing)
                    self.source.await_replies([found.original])
            return
        self.callers[outgoing.request_id] = callers
        self._answer(outgoing.request_id, self._decode_reply(outgoing, found.reply))

    def _decode_reply(self, outgoing: Outgoing, reply: bytes) -> Exit:
        """A stored reply, as its RPC's codec reads it."""
        entity = lookup(outgoing.entity_type)
        rpc: RpcSpec | None = None if entity is None else entity.rpcs.get(outgoing.tag)
        codec = _ANY_REPLY if rpc is None else rpc.codec
        try:
            return codec.decode(reply)
        except Exception as err:
            what = f"stored reply of {outgoing.entity_type}.{outgoing.tag}"
            return Failure(MalformedMessage(f"{what} does not decode: {err}"))

    def _replied(self, replies: list[_Reply], answer: Any) -> None:
        """Replies are durable: their callers hear of them and their slots free."""
        self._wrote()
        failed = answer if isinstance(answer, BaseException) else None
        for index, (delivery, rpc, encoded, _) in enumerate(replies):
            if delivery is None:
                continue
            if failed is None and isinstance(answer[index], Fenced):
                # Fenced: the shard moved to another runner, which runs the request again;
                # its callers here get the reply it stores.
                self._moved([delivery])
                self._finished.append(delivery)
                continue
            if failed is None:
                self._settle(delivery, rpc, encoded)
                continue
            instance = self.instances.get((delivery.entity_type, delivery.entity_id))
            if instance is not None:
                instance.saved_state = None  # stored again with the next reply
            error = PersistenceError(f"the reply could not be saved: {failed}")
            self._settle(delivery, None, Failure(error))
        self._schedule_flush()

    def _refused(self, outgoing: Outgoing, refusal: Refusal) -> None:
        kind = refusal.kind
        if outgoing.forwarded:
            self._refused_forwarded(outgoing, refusal)
            return
        if outgoing.persisted and (kind == "NotAssigned" or outgoing.transported):
            # Saved claimed, and its shard moved away meanwhile, or its owner did not take it
            # (or could not be reached): stored, it waits for a storage read, which its owner
            # is woken for; its caller reads the stored reply.
            outgoing.transported = False
            self._unclaim(outgoing.request_id, outgoing.entity_id)
            taken = self._taken.pop(outgoing.request_id, None)
            if taken is not None and not taken.done():
                taken.set_result(None)
            self._await_remote([outgoing])
            return
        if outgoing.persisted and kind == "MailboxFull":
            # Stored: it waits there, and a read delivers it once a slot frees.
            self.journal.write_then([Op.unclaim(outgoing.request_id)], _ignore)
            self.source.poll_storage(None, when_room=True)
            return
        error: BaseException
        if kind == "MailboxFull":
            error = MailboxFull(outgoing.entity_type, outgoing.entity_id, refusal.message)
        elif kind == "AlreadyProcessing":
            error = AlreadyProcessingMessage(refusal.message)
        elif kind in ("NotAssigned", "NoRunner"):
            error = EntityNotAssignedToRunner(refusal.message)
        elif kind == "RunnerUnavailable":
            error = RunnerUnavailable(refusal.message)
        else:
            error = MalformedMessage(refusal.message)
        taken = self._taken.pop(outgoing.request_id, None)
        if taken is not None and not taken.done():
            taken.set_exception(error)
        self._answer(outgoing.request_id, Failure(error))

    def _refused_forwarded(self, outgoing: Outgoing, refusal: Refusal) -> None:
        """A request sent here, refused when offered again (after a defect's delay).

        Its caller sends it again if its shard moved, or hears why.
        """
        assert self.sharding is not None
        if refusal.kind == "NotAssigned":
            self.sharding.moved([outgoing.request_id])
            return
        error = (
            MailboxFull(outgoing.entity_type, outgoing.entity_id, refusal.message)
            if refusal.kind == "MailboxFull"
            else MalformedMessage(refusal.message)
        )
        encoded = _ANY_REPLY.settle(Failure(error))[0]
        self._forwarded_replies.append((outgoing.request_id, encoded))
        self._schedule_flush()

    def _unclaim(self, request_id: int, entity_id: str) -> None:
        """Clears a stored request's claim, and wakes its shard's owner to read it."""
        shard = self._shard(entity_id) if self.engine.cluster else None
        self.journal.write_then([Op.unclaim(request_id, wake_shard=shard)], _ignore)

    def _answer(self, request_id: int, exit_: Exit) -> None:
        self._remote.pop(request_id, None)  # routed back here after all: answered here
        callers = self.callers.pop(request_id, ())
        for caller in callers:
            if caller.done():
                continue
            if isinstance(exit_, Success):
                caller.set_result(exit_.value)
            else:
                caller.set_exception(exit_.error)

    # Running --------------------------------------------------------------------------------

    def take(
        self, work: list[Deliver | Passivate | RemoteReply | Release | Interrupt | Routed]
    ) -> None:
        """Work from the engine's poll: requests that may run now, instances to drop."""
        ready: list[Deliver] = []
        for item in work:
            if isinstance(item, Deliver):
                ready.append(item)
            elif isinstance(item, RemoteReply):
                outgoing = self._remote.pop(item.request_id, None)
                if outgoing is not None:
                    self._answer(item.request_id, self._decode_reply(outgoing, item.value))
            elif isinstance(item, Release):
                self._release(item.shards, item.forced)
            elif isinstance(item, Routed):
                self._routed(item)
            elif isinstance(item, Interrupt):
                ready.extend(self._interrupted_elsewhere(item))
            else:
                self.instances.pop((item.entity_type, item.entity_id), None)
        self._run(ready)

    def _routed(self, routed: Routed) -> None:
        """A request sent to another runner was taken there (a discarded one), or refused."""
        outgoing = self._remote.get(routed.request_id)
        if outgoing is None:
            return
        if routed.refusal is not None:
            del self._remote[routed.request_id]
            self._refused(outgoing, routed.refusal)
            return
        if routed.request_id not in self.callers:
            del self._remote[routed.request_id]
        # (Else a duplicate's callers wait on the reply of this discarded request: stored.)
        taken = self._taken.pop(routed.request_id, None)
        if taken is not None and not taken.done():
            taken.set_result(None)

    def _interrupted_elsewhere(self, interrupt: Interrupt) -> list[Deliver]:
        """The caller of a request sent here gave up: its handler stops, or it is dropped."""
        running = self._running.get(interrupt.request_id)
        if running is not None:
            if running[1] is not None:
                self._interrupted_forwarded.add(interrupt.request_id)
                running[1].cancel()  # `_handle` frees the slot
            return []
        return self.source.drop_request(
            interrupt.entity_type, interrupt.entity_id, interrupt.request_id
        )

    def _run(self, ready: list[Deliver]) -> None:
        loading: list[Instance] = []
        for delivery in ready:
            key = (delivery.entity_type, delivery.entity_id)
            instance = self.instances.get(key)
            if instance is None:
                entity = lookup(delivery.entity_type)
                if entity is None:
                    self._reply(
                        delivery,
                        None,
                        Failure(Defect("plait.cluster", f"entity type {key[0]!r} is unknown")),
                    )
                    continue
                instance = self.instances[key] = Instance(self, entity, delivery.entity_id)
                if entity.state_model is not None:
                    instance.loading = []
                    loading.append(instance)
            if instance.loading is not None:
                instance.loading.append(delivery)
                continue
            self._start(instance, delivery)
        if loading:
            self._load_states(loading)

    def _load_states(self, instances: list[Instance]) -> None:
        """Reads the stored states of instances just made, then runs what waits for them."""
        store = self.journal.store
        addresses = [(i.entity.name, i.entity_id) for i in instances]
        if self.journal.immediate:
            self._loaded(instances, True, store.entity_states_now(addresses))
            return
        bridge = _bridge.for_loop(self.loop)
        try:
            token = store.entity_states(bridge.native, addresses)
        except Exception as err:
            self._loaded(instances, False, err)
            return
        bridge.on_result(token, functools.partial(self._loaded, instances))

    def _loaded(self, instances: list[Instance], ok: bool, states: Any) -> None:
        for index, instance in enumerate(instances):
            waiting, instance.loading = instance.loading or [], None
            model = instance.entity.state_model
            failure: Exit | None = None
            if not ok:
                failure = Failure(PersistenceError(f"entity state could not be read: {states}"))
            elif states[index] is not None and model is not None:
                try:
                    instance.state = model.model_validate_json(states[index])
                    instance.saved_state = states[index]
                except pydantic.ValidationError as err:
                    what = f"{instance.entity.name}/{instance.entity_id}"
                    failure = Failure(
                        Defect(
                            "plait.cluster.MalformedMessage",
                            f"stored state of {what} does not match {model.__name__}: {err}",
                        )
                    )
            if failure is not None:
                # Not made: the next request reads its state again.
                key = (instance.entity.name, instance.entity_id)
                if self.instances.get(key) is instance:
                    del self.instances[key]
                for delivery in waiting:
                    if delivery.persisted and not ok:
                        self._retry_later(delivery)
                    else:
                        self._reply(delivery, instance.entity.rpcs.get(delivery.tag), failure)
                continue
            if self.instances.get((instance.entity.name, instance.entity_id)) is instance:
                for delivery in waiting:
                    self._start(instance, delivery)

    def _retry_later(self, delivery: Deliver) -> None:
        """Frees a stored request's slot and claim, for a later read to deliver it again.

        For a passing failure (its instance's state could not be read), not its reply. One
        sent from another process: its caller reads the stored reply.
        """
        if delivery.forwarded and self.sharding is not None:
            self._unclaim(delivery.request_id, delivery.entity_id)
            self.sharding.moved([delivery.request_id])
        else:
            self.journal.write_then([Op.unclaim(delivery.request_id)], _ignore)
        self.source.poll_storage(None, when_room=True)
        self._finished.append(delivery)
        self._schedule_flush()

    def _start(self, instance: Instance, delivery: Deliver) -> None:
        """Runs a request's handler: its first step now, a task only if it has to wait.

        Most handlers of a chat backend answer without waiting on anything; a task each
        (scheduled, stepped, its callbacks) cost more than the handler. The first step runs in
        a context of its own, as a task's would, and the task continues in it.
        """
        request_id = delivery.request_id
        entry: tuple[Deliver, asyncio.Task[None] | None] = (delivery, None)
        instance.running[request_id] = entry
        self._running[request_id] = entry
        handling: Coroutine[Any, Any, object] = (
            self._handle(instance, delivery)
            if tracing.tracer() is None and metrics() is None
            else self._handle_observed(instance, delivery)
        )
        context = contextvars.copy_context()
        # The handler's calls go to this engine, whatever context the work came in.
        context.run(current_engine.set, self.engine)
        try:
            waits_on = context.run(handling.send, None)
        except StopIteration:
            return  # answered in its first step (and forgotten by `_handle`)
        task = self.loop.create_task(_resumed(handling, waits_on), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if instance.running.get(request_id) is entry:
            instance.running[request_id] = (delivery, task)
        if self._running.get(request_id) is entry:
            self._running[request_id] = (delivery, task)

    async def _handle_observed(self, instance: Instance, delivery: Deliver) -> None:
        """`_handle` in a span (the caller's child) and counted, when tracing or metrics are on."""
        entity = instance.entity.name
        span = token = None
        if tracing.tracer() is not None:
            traceparent = tracing.split_trace(delivery.payload)[1]
            span = tracing.start_span(
                "plait.entity.handle",
                {
                    "plait.entity": entity,
                    "plait.entity_id": instance.entity_id,
                    "plait.rpc": delivery.tag,
                    "plait.persisted": delivery.persisted,
                },
                parent=tracing.context_of(traceparent),
                kind="server",
            )
            assert span is not None
            token = tracing.activate(span)
        outcome = "interrupted"
        try:
            outcome = await self._handle(instance, delivery)
        finally:
            if (counters := metrics()) is not None:
                counters.of(counters.entity_messages, entity, delivery.tag, outcome).inc()
            if span is not None:
                tracing.deactivate(token)
                tracing.end_span(span, outcome)

    async def _handle(self, instance: Instance, delivery: Deliver) -> str:
        """Runs a request's handler and replies. Returns how it ended (span and metric label)."""
        rpc: RpcSpec | None = instance.entity.rpcs.get(delivery.tag)
        if rpc is None:
            error = MalformedMessage(f"entity {instance.entity.name!r} has no RPC {delivery.tag!r}")
            self._reply(
                delivery, None, Failure(Defect("plait.cluster.MalformedMessage", str(error)))
            )
            return "malformed"
        outcome: Exit
        try:
            payload = rpc.decode_payload(tracing.split_trace(delivery.payload)[0])
            ctx: EntityContext[Any] = EntityContext(instance, delivery.request_id)
            if rpc.is_stream:
                await self._run_stream(rpc, ctx, payload, delivery.request_id)
                value = None
            elif rpc.takes_payload:
                value = await rpc.handler(ctx, payload)
            else:
                value = await rpc.handler(ctx)
            outcome = Success(value)
        except MalformedMessage as exc:
            outcome = Failure(Defect("plait.cluster.MalformedMessage", str(exc)))
        except Exception as exc:  # the codec sorts declared errors from defects
            outcome = Failure(exc)
        except BaseException as exc:
            if passes_through(exc):
                if delivery.request_id in self._moving:
                    # Its shard moved: the new owner runs it again; nothing is stored here.
                    self._moving.discard(delivery.request_id)
                    self._forget(instance, delivery)
                    raise
                if delivery.forwarded:
                    given_up = delivery.request_id in self._interrupted_forwarded
                    self._interrupted_forwarded.discard(delivery.request_id)
                else:
                    given_up = delivery.request_id not in self.callers
                if not self._closing and given_up:
                    # Its caller gave up (a client interrupt): the slot frees; a persisted
                    # request's stored reply is the interrupt.
                    self._forget(instance, delivery)
                    if delivery.persisted:
                        self._reply(delivery, rpc, _interrupt(delivery.request_id))
                    else:
                        self._finished.append(delivery)
                        self._schedule_flush()
                raise
            outcome = unexpected(f"RPC {instance.entity.name}.{rpc.name}", exc)
        if (
            isinstance(outcome, Failure)
            and not isinstance(outcome.error, (*rpc.codec.error_types, Defect))
            and not instance.entity.disable_fatal_defects
        ):
            self._restart(instance, rpc, outcome.error)
            return "restarted"
        self._forget(instance, delivery)
        self._defects.pop((instance.entity.name, instance.entity_id), None)
        self._reply(delivery, rpc, outcome)
        return "success" if isinstance(outcome, Success) else "failure"

    def _forget(self, instance: Instance, delivery: Deliver) -> None:
        instance.running.pop(delivery.request_id, None)
        self._running.pop(delivery.request_id, None)

    def _restart(self, instance: Instance, rpc: RpcSpec, error: BaseException) -> None:
        """A handler died: the instance is made again and runs its requests again.

        Effect's fatal defect: after the next delay of the entity's `defect_retry`. Its state
        is the one loaded anew; the other requests it was running are cancelled and run again
        too, in the order they came.
        """
        key = (instance.entity.name, instance.entity_id)
        log.error(
            "defect in entity %s/%s (RPC %s), restarting it",
            key[0],
            key[1],
            rpc.name,
            exc_info=error,
            extra={
                "entity_type": key[0],
                "entity_id": key[1],
                "rpc": rpc.name,
                **fields(entity=f"{key[0]}/{key[1]}", runner=_address(self.config)),
            },
        )
        if self.instances.get(key) is instance:
            del self.instances[key]
        current = asyncio.current_task()
        for _, task in instance.running.values():
            if task is not None and task is not current:
                task.cancel()
        held = self.source.evict(*key)
        # What it ran, then what it held and never ran, again in the order they came.
        replay = [instance.running[i][0] for i in held.running if i in instance.running]
        replay.extend(held.queued)
        for request_id in instance.running:
            self._running.pop(request_id, None)
        instance.running.clear()
        delays = self._defects.get(key)
        if delays is None:
            delays = self._defects[key] = instance.entity.defect_retry.delays()
        delay = next(delays, None)
        if delay is None:  # the schedule ran out: the requests fail with the defect
            for delivery in replay:
                self._reply(delivery, rpc, Failure(error))
            return
        task = self.loop.create_task(self._replay(replay, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay(self, replay: list[Deliver], delay: float) -> None:
        await self.engine.clock.sleep(delay)
        for delivery in replay:
            if delivery.forwarded and delivery.persisted and self.sharding is not None:
                # Out of the mailbox meanwhile, so a storage read may have taken it: left to
                # storage, its caller in another process reads the stored reply (and so do a
                # duplicate's callers here).
                self._unclaim(delivery.request_id, delivery.entity_id)
                self.sharding.moved([delivery.request_id])
                self._await_remote([_outgoing_of(delivery)])
                continue
            self._outbox.append(_outgoing_of(delivery, forwarded=delivery.forwarded))
        self._schedule_flush()

    async def _run_stream(
        self, rpc: RpcSpec, ctx: EntityContext[Any], payload: object, request_id: int
    ) -> None:
        """Runs a streaming handler, handing each chunk to its reader as it would arrive.

        The reader's queue holds one chunk: the handler waits until the reader took the
        previous one (Effect's acknowledged chunks).
        """
        generator = rpc.handler(ctx, payload) if rpc.takes_payload else rpc.handler(ctx)
        stream = self._streams.get(request_id)
        try:
            while True:
                # The credit first: the handler makes no chunk its reader has no room for.
                if stream is not None:
                    await stream.credit.acquire()
                try:
                    item = await anext(generator)
                except StopAsyncIteration:
                    return
                encoded, _ = rpc.codec.settle(Success(item))
                chunk = rpc.codec.decode(encoded)
                if stream is not None:
                    stream.queue.put_nowait(chunk)
        finally:
            await generator.aclose()

    def _reply(self, delivery: Deliver, rpc: RpcSpec | None, outcome: Exit) -> None:
        """Answers a request: its caller gets the exit as it would over the wire.

        A persisted request's reply is saved first (with its instance's state, if that
        changed); its caller hears of it, and its slot frees, once that is durable.
        """
        if not delivery.persisted:
            self._settle(delivery, rpc, outcome)
            return
        encoded, _ = (rpc.codec if rpc is not None else _ANY_REPLY).settle(outcome)
        # On a cluster, written as the shard's owner: refused once another runner holds it.
        shard = self._shard(delivery.entity_id) if self.engine.cluster else None
        # Its caller here, or in the process it came from over the transport, gets the reply
        # from this process: others (a duplicate's caller) read it at their regular poll.
        notify = not delivery.forwarded and delivery.request_id not in self.callers
        ops = [Op.reply(delivery.request_id, encoded, shard, notify=notify)]
        instance = self.instances.get((delivery.entity_type, delivery.entity_id))
        if instance is not None and instance.entity.state_model is not None:
            state = instance.state
            data = state.model_dump_json().encode() if isinstance(state, BaseModel) else None
            if data is not None and data != instance.saved_state:
                ops.append(Op.entity_state(delivery.entity_type, delivery.entity_id, data, shard))
                instance.saved_state = data
        self._replies.append((delivery, rpc, encoded, ops))
        self._write_early()
        self._schedule_flush()

    def _settle(self, delivery: Deliver, rpc: RpcSpec | None, outcome: Exit | bytes) -> None:
        """The caller gets the exit as it would over the wire; the slot frees.

        `outcome` is the exit, or (a persisted reply) the exit as stored.
        """
        codec = _ANY_REPLY if rpc is None else rpc.codec
        if isinstance(outcome, bytes):
            encoded: bytes | None = outcome
        elif rpc is not None and not rpc.is_stream:
            encoded, _ = codec.settle(outcome)
        else:
            encoded = None
        if delivery.forwarded:
            # Its caller is in another process: the reply goes back over the transport, to be
            # decoded there. (A duplicate's callers here hear of it below.)
            if encoded is None:
                assert not isinstance(outcome, bytes)
                encoded = _ANY_REPLY.settle(outcome)[0]
            self._forwarded_replies.append((delivery.request_id, encoded))
            if delivery.request_id not in self.callers:
                self._finished.append(delivery)
                self._schedule_flush()
                return
        if encoded is not None:
            try:
                outcome = codec.decode(encoded)
            except Exception as err:  # a reply that does not survive its own schema
                outcome = Failure(MalformedMessage(f"reply of {rpc!r} does not decode: {err}"))
        assert not isinstance(outcome, bytes)
        stream = self._streams.pop(delivery.request_id, None)
        if stream is not None:
            stream.queue.put_nowait(outcome if isinstance(outcome, Failure) else _END)
        self._answer(delivery.request_id, outcome)
        self._finished.append(delivery)
        self._schedule_flush()

    # Shards moving --------------------------------------------------------------------------

    def join(self, sharding: Sharding) -> None:
        """This engine runs as a runner of a cluster, a member through `sharding`."""
        self.sharding = sharding
        self.ids = SnowflakeGenerator(sharding.machine_id)

    def _release(self, shards: list[str], forced: bool) -> None:
        """Stops serving `shards`: their entities finish (or, forced, stop now), then go."""
        task = self.loop.create_task(self._drain_shards(set(shards), forced))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _instances_of(self, shards: set[str]) -> list[Instance]:
        return [
            instance
            for (_, entity_id), instance in self.instances.items()
            if self._shard(entity_id) in shards
        ]

    async def _drain_shards(self, shards: set[str], forced: bool) -> None:
        # The shards' workflow runs stop beside their entities, before the same deadline: the
        # cluster releases the leases at it, drained or not. They start no new activity from
        # now on; those in one get most of the termination timeout to finish it.
        timeout = self.config.entity_termination_timeout.total_seconds()
        runs = self.loop.create_task(
            self.engine.stop_runs(shards, 0.0 if forced else timeout * 0.7)
        )
        if not forced:
            # Until nothing of these shards runs or loads its state, and every reply is stored
            # under the lease, before it goes.
            deadline = self.loop.time() + self.config.entity_termination_timeout.total_seconds()
            while (left := deadline - self.loop.time()) > 0:
                instances = self._instances_of(shards)
                running = {
                    task
                    for instance in instances
                    for _, task in instance.running.values()
                    if task is not None and not task.done()
                }
                loading = any(instance.loading for instance in instances)
                if running:
                    await asyncio.wait(running, timeout=left)
                elif loading:
                    await asyncio.sleep(0.005)
                self._flush()
                await self._writes_settled(max(0.0, deadline - self.loop.time()))
                if not running and not loading:
                    break
        unstarted: list[Deliver] = []
        for instance in self._instances_of(shards):
            unstarted.extend(instance.loading or [])
            for request_id, (_, task) in list(instance.running.items()):
                if task is not None and not task.done():
                    self._moving.add(request_id)
                    task.cancel()
            key = (instance.entity.name, instance.entity_id)
            if self.instances.get(key) is instance:
                del self.instances[key]
        drained = self.source.drained(sorted(shards))
        moved = [self._running.pop(i)[0] for i in drained.running if i in self._running]
        self._moved([*moved, *unstarted, *drained.queued])
        # Stopped before the lease goes, so that the new owner's never overlaps this one; the
        # executions' runs too (nothing recorded: the new owner replays their journals).
        await self.singletons.stop(shards)
        await runs
        if self.sharding is not None:
            self.sharding.drained(sorted(shards))

    def _moved(self, deliveries: list[Deliver]) -> None:
        """Requests whose shard moved away: their callers here wait for the new owner's reply."""
        remote: list[Outgoing] = []
        forwarded = [d.request_id for d in deliveries if d.forwarded]
        if forwarded and self.sharding is not None:
            self.sharding.moved(forwarded)  # their callers send them to the new owner
        for delivery in deliveries:
            if delivery.request_id not in self.callers:
                continue
            outgoing = _outgoing_of(delivery)
            if delivery.persisted:
                remote.append(outgoing)
            elif (
                self.sharding is not None
                and not delivery.forwarded
                and delivery.request_id not in self._streams
            ):
                self._send_elsewhere([outgoing])  # to the new owner
            else:
                message = f"{delivery.entity_type}/{delivery.entity_id} moved to another runner"
                self._answer(delivery.request_id, Failure(EntityNotAssignedToRunner(message)))
        self._await_remote(remote)

    async def _writes_settled(self, seconds: float) -> None:
        """Waits (up to `seconds`) until the saves and replies sent so far are answered."""
        if self._writing:
            self._written = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._written), seconds)

    # Closing --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Takes no more requests and lets those running finish, for the termination timeout.

        Effect's `entityTerminationTimeout`: what is still running after it is cancelled by
        `close` (a persisted request without its reply is delivered again by the next
        engine). Replies made meanwhile are stored before this returns.
        """
        self._closed = EngineClosedError("", "the engine is closing")
        await self.singletons.stop(None)
        timeout = self.config.entity_termination_timeout.total_seconds()
        deadline = self.loop.time() + timeout
        if self._tasks and timeout > 0:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        self._flush()  # the replies of what finished, to the store now
        await self._writes_settled(max(0.0, deadline - self.loop.time()))

    def close(self, error: BaseException) -> None:
        """The engine closes: handlers stop and callers still waiting get `error`."""
        self._closed = error
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for callers in [*self.callers.values(), [*self._taken.values()]]:
            for caller in callers:
                if not caller.done():
                    caller.set_exception(error)
        self.callers.clear()
        self._taken.clear()
        self.instances.clear()


#: A persisted reply on its way to the store: the request (None: an interrupt whose caller is
#: gone), its RPC, the exit as stored, and the ops that store it.
_Reply = tuple[Deliver | None, "RpcSpec | None", bytes, list[Op]]

#: Encodes and decodes replies whose RPC is unknown (defects, interrupts).
_ANY_REPLY = ExitCodec("entity reply", Any, ())


def _address(config: ShardingConfig) -> str | None:
    """This runner's address for log records (None for a client-only process)."""
    address = config.runner_address
    return None if address is None else str(address)


def _outgoing_of(delivery: Deliver, *, forwarded: bool = False) -> Outgoing:
    """A delivered request, to offer or await again."""
    return Outgoing(
        delivery.request_id,
        delivery.entity_type,
        delivery.entity_id,
        delivery.tag,
        delivery.payload,
        delivery.persisted,
        forwarded,
    )


def _end_send_span(span: Any, future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        tracing.end_span(span, "interrupted")
    elif (error := future.exception()) is not None:
        tracing.end_span(span, "failure", error)
    else:
        tracing.end_span(span, "success")


def _interrupt(request_id: int) -> Exit:
    return Failure(Interrupted(str(request_id), f"request {request_id} was interrupted"))


def _storable_text(text: str) -> bool:
    """Whether `text` has a UTF-8 encoding (no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _ignore(answer: Any) -> None:
    """A write whose outcome changes nothing (an unclaim: a lost one only delays a read)."""


def _ms(seconds: float) -> int:
    return milliseconds_ceil(seconds)


def _epoch_ms(at: datetime) -> int:
    if at.tzinfo is None:
        msg = f"deliver_at must be timezone-aware, got {at!r}"
        raise InvalidArgumentError(msg)
    return int(at.timestamp() * 1000)


@types.coroutine
def _resumed(coroutine: Coroutine[Any, Any, object], waits_on: Any) -> Generator[Any, Any, None]:
    """Continues a coroutine that took its first step outside a task: what a task runs.

    It hands the task what the coroutine waits on, and passes in what the task sends or
    throws (a result, a cancellation) until the coroutine returns.
    """
    while True:
        try:
            sent = yield waits_on
        except BaseException as thrown:  # a cancellation, delivered into the coroutine
            try:
                waits_on = coroutine.throw(thrown)
            except StopIteration:
                return
        else:
            try:
                waits_on = coroutine.send(sent)
            except StopIteration:
                return


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a future's error as seen (a stream's reads report it instead)."""
    if not future.cancelled():
        future.exception()
