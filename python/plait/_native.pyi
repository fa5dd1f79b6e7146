# Stub of the private extension module built from rust/src/py/. Checked against the compiled
# module by `python -m mypy.stubtest plait._native`.

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol, TypeAlias, TypedDict, final

from plait.errors import InvalidArgumentError

__all__ = [
    "CLAIM_MS",
    "DEFAULT_SHARDS_PER_GROUP",
    "FORWARD_CLAIM_MS",
    "AsyncBridge",
    "ClusterView",
    "Deferred",
    "DeferredAt",
    "Deliver",
    "Drained",
    "Duplicate",
    "Ended",
    "Entry",
    "Execution",
    "Fenced",
    "Filter",
    "HashRing",
    "History",
    "Interrupt",
    "Listed",
    "Op",
    "Page",
    "Passivate",
    "QueueItem",
    "Refusal",
    "Release",
    "RemoteReply",
    "Resume",
    "Routed",
    "Sharding",
    "Snapshot",
    "SnowflakeGenerator",
    "Step",
    "Store",
    "Timer",
    "TimerServiceRef",
    "TimerWheel",
    "WorkSource",
    "__version__",
    "_after_fork_in_child",
    "_panic",
    "_panic_async",
    "activity_idempotency_key",
    "encode_deferred_token",
    "execution_id",
    "execution_ids",
    "hash_string",
    "parse_deferred_token",
    "shard_id",
    "shard_ids",
    "snowflake_make",
    "snowflake_parts",
    "wall_clock_ms",
]

__version__: str
DEFAULT_SHARDS_PER_GROUP: int
#: A request's claim lasts this long (ms); an older one is void and a storage read takes it.
CLAIM_MS: int
#: A request saved for another runner, then sent there, is claimed this long (ms).
FORWARD_CLAIM_MS: int

# ids

def execution_id(workflow: str, idempotency_key: str) -> str:
    """The execution id of `workflow` for `idempotency_key`: sha256 prefix, 32 hex digits.

    Example:
        >>> execution_id("EmailWorkflow", "test-email-1")
        'da09278eeca46f53cc05e2ed728924aa'
    """

def execution_ids(workflow: str, idempotency_keys: Iterable[str]) -> list[str]:
    """The execution ids of `workflow` for many idempotency keys, in one call."""

def activity_idempotency_key(execution_id: str, name: str, attempt: int | None = None) -> str:
    """An activity's idempotency key, for deduplicating its external effect.

    Args:
        execution_id: The workflow run.
        name: The activity's durable name.
        attempt: Give the attempt (from 1) for a key that differs per attempt.

    Raises:
        InvalidArgumentError: `attempt` is below 1.
    """

def encode_deferred_token(workflow: str, execution_id: str, deferred: str) -> str: ...
def parse_deferred_token(token: str) -> tuple[str, str, str]: ...

# shard routing

def hash_string(value: str) -> int:
    """Effect's `Hash.string`: DJB2 over UTF-16 code units, as a signed 32-bit int.

    Strings holding lone surrogates hash as the same JavaScript string would.
    """

def shard_id(entity_id: str, shards_per_group: int = 300) -> int:
    """The 1-based shard of `entity_id`, as Effect's cluster computes it.

    Raises:
        InvalidArgumentError: `shards_per_group` is not a positive 32-bit count.

    Example:
        >>> shard_id("entity-1")
        231
    """

def shard_ids(entity_ids: Iterable[str], shards_per_group: int = 300) -> list[int]:
    """The 1-based shards of many entity ids, in one call."""

@final
class HashRing:
    """Runners on a weighted consistent-hash ring; assigns shards with bounded load.

    Effect's ring exactly: 128 virtual nodes per unit of weight, each runner capped at its
    weighted share of the shards.

    Example:
        >>> ring = HashRing()
        >>> for n in (1, 2, 3):
        ...     ring.add(f"runner{n}:34431")
        >>> [owner[6] for owner in ring.shards(12)]
        ['3', '1', '1', '2', '3', '3', '2', '2', '1', '1', '2', '3']
    """

    def __new__(cls, base_weight: int = 128) -> HashRing: ...
    def add(self, runner: str, weight: float = 1.0) -> None:
        """Adds `runner` (`"host:port"`), or changes its weight.

        Weights below 0.1 count as 0.1, as in Effect.

        Raises:
            InvalidArgumentError: `weight` is not a positive finite number.
        """

    def remove(self, runner: str) -> None:
        """Removes `runner`.

        Raises:
            UnknownRunnerError: The ring does not hold `runner`.
        """

    def get(self, key: str) -> str | None:
        """The runner nearest to the hash of `key`; `None` for an empty ring."""

    def shards(self, count: int = 300) -> list[str] | None:
        """The owner of each shard: element `i` owns shard `i + 1`; `None` for an empty ring."""

    @property
    def runners(self) -> list[tuple[str, float]]:
        """`(runner, weight)` pairs in insertion order."""

    def __contains__(self, runner: object, /) -> bool: ...
    def __len__(self) -> int: ...

# snowflakes

def snowflake_make(timestamp_ms: int, machine_id: int, sequence: int) -> int: ...
def snowflake_parts(snowflake: int) -> tuple[int, int, int]: ...

@final
class SnowflakeGenerator:
    """Makes strictly increasing snowflake ids for one machine id.

    Ids stay increasing when the wall clock steps back; past 4096 ids in one millisecond the
    generator moves on to the next millisecond.

    Raises:
        InvalidArgumentError: `machine_id` is outside 0..=1023.
    """

    def __new__(cls, machine_id: int) -> SnowflakeGenerator: ...
    @property
    def machine_id(self) -> int:
        """The machine id stamped into every id; settable (a runner learns it on registering)."""

    @machine_id.setter
    def machine_id(self, machine_id: int) -> None: ...
    def next_id(self) -> int:
        """The next id."""

    def next_ids(self, count: int) -> list[int]:
        """The next `count` ids, increasing, in one call."""

# timers

def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, from the clock the timers use."""

@final
class TimerWheel:
    """A hierarchical timer wheel: timer ids due at instants in milliseconds.

    Eleven levels of 64 slots cover every 64-bit instant, so timers years ahead cost the same
    as timers a millisecond ahead. Insert, cancel and per-timer firing are O(1).

    Example:
        >>> wheel = TimerWheel(now_ms=1_000)
        >>> wheel.insert_many([(1, 1_500), (2, 1_200), (3, 9_000)])
        >>> wheel.advance(2_000)
        [2, 1]
    """

    def __new__(cls, now_ms: int | None = None) -> TimerWheel: ...
    def insert(self, timer_id: int, due_ms: int) -> bool:
        """Schedules or moves a timer; an instant already past fires at the next advance.

        Returns:
            Whether a pending timer with that id was replaced.
        """

    def insert_many(self, timers: Iterable[tuple[int, int]]) -> None:
        """Schedules `(timer_id, due_ms)` pairs in one call."""

    def cancel(self, timer_id: int) -> bool:
        """Cancels a timer. Returns whether it was pending."""

    def advance(self, now_ms: int, max_timers: int | None = None) -> list[int]:
        """Moves to `now_ms`; takes the ids due by then, by due instant, then insertion.

        With `max_timers`, takes only the earliest that many; the rest stay due, cancellable,
        and come first at the next advance.
        """

    def next_due(self) -> int | None:
        """The earliest due instant, or `None` when empty."""

    def due_of(self, timer_id: int) -> int | None:
        """When a pending timer is due, or `None`."""

    @property
    def elapsed_ms(self) -> int:
        """The instant the wheel has advanced to."""

    def __len__(self) -> int: ...
    def __contains__(self, timer_id: object, /) -> bool: ...

# the journal store

_Status: TypeAlias = Literal["running", "suspended", "complete"]
_OpKind: TypeAlias = Literal[
    "start",
    "append",
    "deferred",
    "status",
    "suspend",
    "interrupt",
    "timer",
    "untimer",
    "request",
    "reply",
    "entity_state",
    "clear_replies",
    "unclaim",
    "claim",
    "reset_claims",
    "offer",
    "queue_claim",
    "queue_renew",
    "queue_done",
]

@final
class Op:
    """One write for `Store.write`, made by its constructors.

    The store applies the ops of one write in order, in one transaction with whatever it
    commits beside them, and answers each as its constructor says. Every op is idempotent.

    Example:
        >>> store = Store.memory()
        >>> store.write_now([Op.start("e", "Greet", b"{}"), Op.append("e", "Hello/1", 0, b"1")])
        [None, True]
        >>> store.write_now([Op.start("e", "Greet", b"{}")])[0].status
        'running'
    """

    @staticmethod
    def start(
        id: str,
        workflow: str,
        payload: bytes,
        parent: str | None = None,
        shard: str | None = None,
    ) -> Op:
        """Records a new running execution unless `id` exists.

        Answers None if created, else the stored `Execution` (unchanged).

        Every journal op takes a `shard` (`"group:id"`): on a runner of a cluster, written as
        the owner of the execution's shard, answered `Fenced` (not applied) once that lease is
        lost.
        """

    @staticmethod
    def append(id: str, key: str, seq: int, value: bytes, shard: str | None = None) -> Op:
        """Stores a step result unless `key` has one.

        Answers whether it was stored (False: the key had a result, or unknown execution).
        """

    @staticmethod
    def deferred(id: str, name: str, value: bytes, shard: str | None = None) -> Op:
        """Stores a deferred's result unless it has one.

        Answers True (stored), False (it had one) or None (unknown execution).
        """

    @staticmethod
    def status(
        id: str, status: _Status, result: bytes | None = None, shard: str | None = None
    ) -> Op:
        """Moves an execution to `status` with `result`; completing it drops its timers.

        Answers False if the execution is complete (its result is final) or unknown.

        Raises:
            InvalidArgumentError: `status` is not running, suspended or complete.
        """

    @staticmethod
    def suspend(id: str, cause: bytes | None, deferreds: int, shard: str | None = None) -> Op:
        """Suspends an execution unless it is complete or holds more than `deferreds` results.

        More deferred results than its run knew: one came that the run did not see, and it
        must run again. Answers whether it was suspended.
        """

    @staticmethod
    def interrupt(id: str, shard: str | None = None) -> Op:
        """Records an interrupt request. Answers True, False (complete) or None (unknown)."""

    @staticmethod
    def timer(execution_id: str, name: str, due_ms: int, shard: str | None = None) -> Op:
        """Stores a durable timer unless one with that execution and name exists.

        Answers whether it was stored (False: it exists, or unknown execution).
        """

    @staticmethod
    def untimer(execution_id: str, name: str) -> Op:
        """Forgets a timer. Answers whether it was stored."""

    @staticmethod
    def request(
        id: int,
        shard: str,
        entity_type: str,
        entity_id: str,
        tag: str,
        payload: bytes,
        primary_key: str | None = None,
        deliver_at_ms: int | None = None,
        claimed_ms: int | None = None,
    ) -> Op:
        """Saves a persisted entity request unless one with its id or key is stored.

        The stored key is `"<entity type>/<entity id>/<tag>/<primary key>"` (hashed past 255
        characters). `claimed_ms`: saved claimed then (its sender delivers it), or None for
        the storage read loop. Answers None (saved) or a `Duplicate`.
        """

    @staticmethod
    def reply(request_id: int, value: bytes, shard: str | None = None, notify: bool = True) -> Op:
        """Saves a request's final reply (the first wins). Answers whether it was stored.

        With `shard`, written as its owner: fenced by the shard's lease on a cluster (it
        answers `Fenced` once the lease is not this runner's). With `notify=False`, callers
        in other processes are not woken (they read it at their regular poll).
        """

    @staticmethod
    def entity_state(
        entity_type: str, entity_id: str, value: bytes, shard: str | None = None
    ) -> Op:
        """Stores an entity instance's durable state. Answers True (`shard`: as `reply`)."""

    @staticmethod
    def clear_replies(request_id: int) -> Op:
        """Forgets a request's reply and claim, to deliver it again. Answers if it is stored."""

    @staticmethod
    def unclaim(request_id: int, wake_shard: str | None = None) -> Op:
        """Clears a request's claim. Answers whether it is stored and unprocessed.

        With `wake_shard`, a cluster's writer wakes that shard's owner to read it.
        """

    @staticmethod
    def offer(queue: str, id: str, payload: bytes, token: str | None = None) -> Op:
        """Offers an item to durable queue `queue` unless one with its id is stored.

        Answers whether it was stored. `token` is the deferred token its result completes
        (None: an item nobody waits on).
        """

    @staticmethod
    def queue_renew(queue: str, id: str, held_ms: int, renewed_ms: int) -> Op:
        """Extends the claim made at `held_ms` on a queue item to `renewed_ms`.

        Answers whether the claim was still `held_ms` (the item not done, not taken again).
        """

    @staticmethod
    def queue_done(queue: str, id: str) -> Op:
        """Marks a queue item done (never taken again). Answers whether it was pending."""

    @property
    def kind(self) -> _OpKind:
        """The op's kind: the name of its constructor."""

    @property
    def execution_id(self) -> str | None:
        """The execution the op is about (None for an entity message op)."""

@final
class Fenced:
    """An owned op's answer once this runner no longer holds its shard's lease: not applied.

    The shard's new owner does its work.
    """

@final
class QueueItem:
    """A durable queue item handed to a worker by `Store.take`."""

    @property
    def queue(self) -> str:
        """The queue's name."""

    @property
    def id(self) -> str:
        """The item's id within its queue."""

    @property
    def payload(self) -> bytes:
        """The encoded payload."""

    @property
    def token(self) -> str | None:
        """The token of the deferred its result completes, or None (nobody waits on it)."""

    @property
    def attempt(self) -> int:
        """How many times it has been taken, this take included (1 the first time)."""

@final
class Duplicate:
    """What saving a request answers when one with the same id or key is stored."""

    @property
    def original(self) -> int:
        """The stored request's id."""

    @property
    def reply(self) -> bytes | None:
        """Its final reply (an encoded exit), if saved."""

@final
class Execution:
    """An execution as the store holds it."""

    @property
    def workflow(self) -> str:
        """The workflow's name."""

    @property
    def payload(self) -> bytes:
        """The encoded payload."""

    @property
    def parent(self) -> str | None:
        """The execution that started this one from inside its run, if any."""

    @property
    def status(self) -> _Status:
        """Where it stands."""

    @property
    def result(self) -> bytes | None:
        """The encoded result: the exit when complete, the cause (if any) when suspended."""

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt was requested; it takes effect when the current run ends."""

@final
class Entry:
    """A step result of an execution's journal."""

    @property
    def key(self) -> str:
        """The step's key (name, attempt and repeat number)."""

    @property
    def seq(self) -> int:
        """The step's position in the run's call order."""

    @property
    def value(self) -> bytes:
        """The encoded exit."""

@final
class Deferred:
    """A deferred's stored result."""

    @property
    def name(self) -> str:
        """The deferred's name."""

    @property
    def value(self) -> bytes:
        """The encoded exit."""

@final
class Snapshot:
    """An execution with its whole journal and deferred results, read at once."""

    @property
    def execution(self) -> Execution:
        """The execution itself."""

    @property
    def entries(self) -> list[Entry]:
        """Its step results, in write order."""

    @property
    def deferreds(self) -> list[Deferred]:
        """Its completed deferreds, in the order they completed."""

@final
class Timer:
    """A durable timer: completes deferred `name` of `execution_id` at `due_ms`."""

    @property
    def execution_id(self) -> str:
        """The execution to wake."""

    @property
    def name(self) -> str:
        """The deferred it completes."""

    @property
    def due_ms(self) -> int:
        """When, in ms since the Unix epoch."""

# Operators' reads: listings, counts, histories

@final
class Filter:
    """Which executions `Store.list_executions` and `Store.count_executions` take.

    Every condition given must hold.

    Example:
        >>> store = Store.memory()
        >>> _ = store.write_now([Op.start("a", "A", b"{}"), Op.start("b", "B", b"{}")])
        >>> [e.id for e in store.list_executions_now(Filter(workflow="B")).executions]
        ['b']
        >>> store.count_executions_now(Filter(status="running"), 10)
        2
    """

    def __new__(
        cls,
        *,
        workflow: str | None = None,
        status: _Status | None = None,
        result_prefixes: Sequence[bytes] = (),
        created_from_ms: int | None = None,
        created_before_ms: int | None = None,
    ) -> Filter:
        """The executions that pass every condition given.

        Of `workflow`, with `status`, whose result starts with one of `result_prefixes` (none:
        any), created in `[created_from_ms, created_before_ms)`.

        Raises:
            StoreError: `status` is not running, suspended or complete.
        """

    @property
    def workflow(self) -> str | None:
        """Only executions of this workflow."""

    @property
    def status(self) -> _Status | None:
        """Only executions with this status."""

    @property
    def result_prefixes(self) -> list[bytes]:
        """Only executions whose stored result starts with one of these (none: any)."""

    @property
    def created_from_ms(self) -> int | None:
        """Only executions created at or after this instant (ms since the Unix epoch)."""

    @property
    def created_before_ms(self) -> int | None:
        """Only executions created before this instant (ms since the Unix epoch)."""

@final
class Listed:
    """An execution as a listing shows it: its record without the payload."""

    @property
    def id(self) -> str:
        """The execution's id."""

    @property
    def workflow(self) -> str:
        """The workflow's name."""

    @property
    def parent(self) -> str | None:
        """The execution that started this one, if any."""

    @property
    def status(self) -> _Status:
        """Where it stands."""

    @property
    def result(self) -> bytes | None:
        """The encoded result: the exit when complete, the cause (if any) when suspended."""

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt was requested."""

    @property
    def created_ms(self) -> int:
        """When it was created (ms since the Unix epoch)."""

    @property
    def updated_ms(self) -> int:
        """When its record last changed (status, result or interrupt flag)."""

    @property
    def cursor(self) -> tuple[int, int]:
        """The listing's position at this execution: `(created_ms, no)`."""

@final
class Page:
    """One page of a listing, newest first."""

    @property
    def executions(self) -> list[Listed]:
        """The executions, newest first (by creation time, then the order stored)."""

    @property
    def next(self) -> tuple[int, int] | None:
        """Where the next page starts (`after=` of the next call); None once nothing is left."""

@final
class Step:
    """A step result with the time it was stored."""

    @property
    def key(self) -> str:
        """The step's key (name, occurrence and attempt)."""

    @property
    def seq(self) -> int:
        """The step's position in call order."""

    @property
    def value(self) -> bytes:
        """The encoded exit."""

    @property
    def at_ms(self) -> int | None:
        """When it was stored (ms since the Unix epoch); None if stored before times were kept."""

@final
class DeferredAt:
    """A deferred's result with the time it was stored."""

    @property
    def name(self) -> str:
        """The deferred's name."""

    @property
    def value(self) -> bytes:
        """The encoded exit."""

    @property
    def at_ms(self) -> int | None:
        """When it was stored, as `Step.at_ms`."""

@final
class History:
    """One execution with everything its journal holds, with times, read consistently."""

    @property
    def id(self) -> str:
        """The execution's id."""

    @property
    def execution(self) -> Execution:
        """Its record."""

    @property
    def created_ms(self) -> int:
        """When it was created (ms since the Unix epoch)."""

    @property
    def updated_ms(self) -> int:
        """When its record last changed."""

    @property
    def steps(self) -> list[Step]:
        """Its step results, in the order they were stored."""

    @property
    def deferreds(self) -> list[DeferredAt]:
        """Its deferred results, in the order they were stored."""

    @property
    def timers(self) -> list[Timer]:
        """Its timers still to fire, earliest first."""

# What a write answers, per op: None, a bool or the existing Execution; in the place of an op
# the store refused (a NUL in a name, a due instant past 2**63 - 1), its InvalidArgumentError,
# not raised: the store applied the other ops.
_OpResult: TypeAlias = Execution | bool | InvalidArgumentError | None

@final
class Store:
    """Executions, their journals, deferred results and timers: the journal store.

    `Store.memory()` keeps them in this process; `Store.open(bridge, url)` in SQLite (one file,
    WAL) or PostgreSQL. Every store keeps one contract:

    - `write` queues its ops when called, so writes apply in call order, and resolves to one
      result per op once they are durable. First write wins: a step or deferred result is never
      replaced, and a complete execution's status and result are final. Writes from every
      caller are committed together, one transaction per round (group commit); connection
      errors are retried.
    - Reads take many ids at once and answer one item per id, in order.
    - The methods taking a `bridge` start a Rust task and return its token, which resolves as
      their docstring says: `await _bridge.call(lambda b: store.write(b, ops))`.
    - The memory store answers every call at once (`immediate`): the `*_now` methods answer
      without a token. A store that answers later refuses them.

    One engine per database and table prefix: `open` takes a lock held until `close`, the
    store's collection, or the process's death.

    Raises:
        StoreConnectError: The database cannot be reached or opened (URL shown, password
            masked).
        EngineLockedError: Another engine holds this database and prefix.
        EngineFencedError: Another engine took the database over; nothing more is written.
        StoreError: The database refused a statement, a read stayed unreachable for 30 s, the
            store is closed, or a `*_now` method was called on a store that answers later.
    """

    @staticmethod
    def memory() -> Store:
        """A store in this process: nothing survives it."""

    @staticmethod
    def open(
        bridge: AsyncBridge,
        url: str,
        prefix: str = "plait_",
        durability: str = "full",
        lease_ttl_ms: int | None = None,
        cluster: bool = False,
    ) -> int:
        """Opens, migrates and locks the store at `url`; resolves to a `Store`.

        Args:
            bridge: The running loop's bridge.
            url: `sqlite://<path>` or `sqlite:<path>` (created if missing), or
                `postgres://...` / `postgresql://...`.
            prefix: Prefix of every table name: `[a-z_][a-z0-9_]{0,30}`.
            durability: `"full"` (a commit survives a crash or power cut) or `"normal"`
                (faster; a crash may lose the last commits but never corrupts).
            lease_ttl_ms: PostgreSQL: how long the engine's lease lasts unrenewed (default
                35,000); it is renewed every 10/35 of that.
            cluster: PostgreSQL: open for a runner of a cluster (no engine lease: its writes
                are fenced by the leases of the shards it holds).

        Raises:
            InvalidArgumentError: Another URL scheme, an in-memory SQLite URL, a bad prefix or
                durability.
        """

    @property
    def immediate(self) -> bool:
        """Whether the store answers every call at once (the memory store)."""

    @property
    def url(self) -> str | None:
        """A SQL store's URL, with any password replaced by `***`; None for the memory store."""

    def write(self, bridge: AsyncBridge, ops: Iterable[Op]) -> int:
        """Queues the ops now; resolves to one result per op once they are committed.

        Writes apply in the order `write` was called. Cancelling the await does not withdraw
        them.

        Raises:
            TypeError: `ops` is a single str, or an item is not an `Op` (the message names
                `ops[<index>]`).
        """

    def write_now(self, ops: Iterable[Op]) -> list[_OpResult]:
        """Applies the ops at once; returns one result per op (an immediate store only)."""

    def snapshots(self, bridge: AsyncBridge, ids: Iterable[str]) -> int:
        """Resolves to a list with one `Snapshot` or None per id, in order.

        Reads a few hundred ids per query, each such chunk in one read transaction, so every
        snapshot is consistent in itself; for many executions at once (recovery).

        Raises:
            TypeError: `ids` is a single str, or an item is not a str (the message names
                `ids[<index>]`).
            InvalidArgumentError: An id is not valid Unicode (the message names `ids[<index>]`).
        """

    def snapshots_now(self, ids: Iterable[str]) -> list[Snapshot | None]:
        """One `Snapshot` or None per id, in order, at once (an immediate store only)."""

    def executions(self, bridge: AsyncBridge, ids: Iterable[str]) -> int:
        """Resolves to a list with one `Execution` or None per id, in order.

        Raises:
            TypeError: `ids` is a single str, or an item is not a str.
            InvalidArgumentError: An id is not valid Unicode.
        """

    def executions_now(self, ids: Iterable[str]) -> list[Execution | None]:
        """One `Execution` or None per id, in order, at once (an immediate store only)."""

    def timers_between(self, bridge: AsyncBridge, after_ms: int, until_ms: int) -> int:
        """Resolves to `([Timer], next_due)`.

        The timers due in `(after_ms, until_ms]`, earliest first (ties by execution id, then
        name), read as a range of the index on due instants however many timers are stored;
        `next_due` is when the first timer after `until_ms` is due, None if there is none.
        `after_ms` -1 takes every timer due up to `until_ms`.
        """

    def timers_between_now(self, after_ms: int, until_ms: int) -> tuple[list[Timer], int | None]:
        """As `timers_between`, at once (an immediate store only)."""

    def with_status(self, bridge: AsyncBridge, status: _Status) -> int:
        """Resolves to the ids of the executions with `status`."""

    def with_status_now(self, status: _Status) -> list[str]:
        """The ids of the executions with `status`, at once (an immediate store only)."""

    def list_executions(
        self,
        bridge: AsyncBridge,
        filter: Filter,
        after: tuple[int, int] | None = None,
        limit: int = 50,
    ) -> int:
        """Resolves to a `Page` of the executions passing `filter`, newest first.

        From just after `after` (a page's `next`); `limit` executions at most, 1 to 1,000.

        Raises:
            InvalidArgumentError: `limit` is out of range.
        """

    def list_executions_now(
        self, filter: Filter, after: tuple[int, int] | None = None, limit: int = 50
    ) -> Page:
        """As `list_executions`, at once (an immediate store only)."""

    def count_executions(self, bridge: AsyncBridge, filter: Filter, cap: int) -> int:
        """Resolves to how many executions pass `filter`, counted up to `cap`."""

    def count_executions_now(self, filter: Filter, cap: int) -> int:
        """As `count_executions`, at once (an immediate store only)."""

    def history(self, bridge: AsyncBridge, id: str) -> int:
        """Resolves to the `History` of execution `id`, or None if the store does not hold it."""

    def history_now(self, id: str) -> History | None:
        """As `history`, at once (an immediate store only)."""

    def replies(self, bridge: AsyncBridge, ids: list[int]) -> int:
        """Resolves to the final replies of requests `ids` (bytes or None each)."""

    def replies_now(self, ids: list[int]) -> list[bytes | None]:
        """The final replies of requests `ids`, at once (an immediate store only)."""

    def take(self, bridge: AsyncBridge, queue: str, limit: int, now_ms: int, claim_ms: int) -> int:
        """Resolves to up to `limit` pending `QueueItem`s of `queue`, in offer order.

        Only items whose claim is void at `now_ms` (never claimed, or claimed at least
        `claim_ms` before); each is claimed at `now_ms`.
        """

    def take_now(self, queue: str, limit: int, now_ms: int, claim_ms: int) -> list[QueueItem]:
        """As `take`, at once (an immediate store only)."""

    def entity_states(self, bridge: AsyncBridge, addresses: list[tuple[str, str]]) -> int:
        """Resolves to the durable states of `(entity type, entity id)`s (bytes or None each)."""

    def entity_states_now(self, addresses: list[tuple[str, str]]) -> list[bytes | None]:
        """The durable states of entity instances, at once (an immediate store only)."""

    def lost(self, bridge: AsyncBridge) -> int:
        """Resolves to why the store lost its lease, or None once it closes.

        At once to None for a store without a lease (memory, SQLite).
        """

    def close(self, bridge: AsyncBridge) -> int:
        """Commits what is queued, releases the lock and the connections; resolves to None.

        The memory store has nothing to release and stays usable.
        """

@final
class TimerServiceRef:
    def __new__(cls) -> TimerServiceRef: ...
    def schedule(self, timer_id: int, due_ms: int) -> bool: ...
    def schedule_many(self, timers: Iterable[tuple[int, int]]) -> None: ...
    def cancel(self, timer_id: int) -> bool: ...
    def take_due(self, max_timers: int) -> list[int]: ...
    def wait_due(self, bridge: AsyncBridge) -> int: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...

# the work source (see plait/engine/work.py)

@final
class Resume:
    """An execution to run again, from its snapshot."""

    @property
    def execution_id(self) -> str: ...
    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def fired(self) -> str | None:
        """The deferred whose timer fired to make it runnable, if that is why."""
    @property
    def recovered(self) -> bool:
        """Found running by a listing rather than woken by an event: a live run goes on."""

@final
class Ended:
    """A run of an execution awaited from another runner ended: its record."""

    @property
    def execution_id(self) -> str: ...
    @property
    def execution(self) -> Execution:
        """Read after the run ended: complete, or suspended if that was awaited."""

class _Outgoing(Protocol):
    """An entity request offered to the mailboxes (any object with these attributes)."""

    @property
    def request_id(self) -> int: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def entity_id(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def persisted(self) -> bool: ...
    @property
    def forwarded(self) -> bool: ...
    @property
    def saved_ms(self) -> int | None: ...

@final
class Drained:
    """What the instances of shards moving away still held (`WorkSource.drained`)."""

    @property
    def running(self) -> list[int]:
        """The ids of the requests they were running (the host has them)."""
    @property
    def queued(self) -> list[Deliver]:
        """The requests they held that never ran: their callers wait for the new owner."""

@final
class Deliver:
    """An entity request that may run now: its instance has a free slot."""

    @property
    def request_id(self) -> int: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def entity_id(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def persisted(self) -> bool: ...
    @property
    def forwarded(self) -> bool:
        """Whether another process sent it over the runners' transport (reply goes back)."""
    @property
    def activates(self) -> bool:
        """Whether the instance became resident with this request (make it first)."""

@final
class Passivate:
    """An entity instance idle long enough: the host drops it."""

    @property
    def entity_type(self) -> str: ...
    @property
    def entity_id(self) -> str: ...

@final
class Refusal:
    """Why a mailbox did not take a request."""

    @property
    def kind(self) -> str:
        """Why, as a name: NotRegistered, MailboxFull, NotAssigned, and so on."""
    @property
    def message(self) -> str: ...

@final
class RemoteReply:
    """The stored final reply of a request sent to an entity on another runner."""

    @property
    def request_id(self) -> int: ...
    @property
    def value(self) -> bytes: ...

@final
class Interrupt:
    """The caller of a request another process sent here gave up: drop it or stop it."""

    @property
    def request_id(self) -> int: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def entity_id(self) -> str: ...

@final
class Routed:
    """A request sent to another runner: taken there (sent with discard), or refused."""

    @property
    def request_id(self) -> int: ...
    @property
    def refusal(self) -> Refusal | None: ...

@final
class Release:
    """Shards to stop serving: finish (forced: stop) their entities, then report them."""

    @property
    def shards(self) -> list[str]: ...
    @property
    def forced(self) -> bool: ...

class _ShardingOptions(TypedDict):
    """How a runner takes part in a cluster (times in ms)."""

    address: str
    listen: str | None
    send_retry_ms: int
    weight: float
    available_groups: list[str]
    groups: list[str]
    shards_per_group: int
    lock_expiration_ms: int
    refresh_interval_ms: int
    refresh_assignments_ms: int
    termination_timeout_ms: int
    advisory: bool
    health_check_ms: int

@final
class ClusterView:
    """What a runner sees of its cluster."""

    @property
    def machine_id(self) -> int: ...
    @property
    def runners(self) -> int: ...
    @property
    def healthy_runners(self) -> int: ...
    @property
    def shards(self) -> list[str]: ...
    @property
    def releasing(self) -> list[str]: ...
    @property
    def fenced_writes(self) -> int: ...
    @property
    def assignments(self) -> dict[str, str]: ...
    @property
    def runner_entities(self) -> dict[str, int]:
        """Every registered runner's resident entities, as of its last heartbeat."""

@final
class Sharding:
    """A runner's membership of a cluster on PostgreSQL."""

    @staticmethod
    def start(
        bridge: AsyncBridge, store: Store, source: WorkSource, options: _ShardingOptions
    ) -> int:
        """Registers the runner and starts its loop; resolves to a `Sharding`."""
    @staticmethod
    def client(
        bridge: AsyncBridge, store: Store, source: WorkSource, options: _ShardingOptions
    ) -> int:
        """A client-only process: no shards, reads the rings to route; resolves to a `Sharding`."""
    @property
    def machine_id(self) -> int: ...
    def view(self) -> ClusterView:
        """What this runner sees now."""
    def send(self, requests: Sequence[_Outgoing], discard: Sequence[bool]) -> None:
        """Sends requests to their entities' runners over the runners' transport.

        Persisted ones (saved first) are sent once: a refusal, or their runner unreachable
        or gone, answers them as `Routed` with the refusal, for their caller to go by storage.
        """
    def interrupt(self, request_ids: list[int]) -> None:
        """The callers of these requests (sent with `send`) gave up."""
    def reply(self, replies: list[tuple[int, bytes]]) -> None:
        """Final replies (encoded exits) of requests other processes sent here."""
    def moved(self, request_ids: list[int]) -> None:
        """Requests sent here whose shard moved away: their callers send them again."""
    def drained(self, shards: list[str]) -> None:
        """These shards' entities are finished: their leases may go."""
    def close(self, bridge: AsyncBridge) -> int:
        """Leaves the cluster; resolves to None once its shards are released."""

@final
class WorkSource:
    """What one engine owns and what runs next: recovery, durable timers, snapshots to resume.

    On start it lists the executions found running, loads the stored timers due within a
    minute, and from then on fires timers as they fall due (the deferred, the execution's running
    mark and the timer's removal in one transaction). Everything to run again comes out of `take`
    as a `Resume` with its snapshot, read after the event.
    """

    def __new__(
        cls,
        store: Store,
        manual_now_ms: int | None = None,
        shards_per_group: int | None = None,
        reply_poll_ms: int = 200,
        scan_ms: int = 10000,
    ) -> WorkSource:
        """Starts the source: on the wall clock, or on a manual one that `advance_to` moves.

        With `shards_per_group`, a runner's: it serves the entities and executions of the
        shards a `Sharding` acquires, listing a shard's running executions when acquired and
        every `scan_ms`.
        """
    def wait(self, bridge: AsyncBridge) -> int:
        """Resolves to None once work is ready to take; raises `ClosedError` once closed."""
    def started(self, bridge: AsyncBridge) -> int:
        """Resolves to None once recovery is listed and the first window of timers read."""
    def take(
        self, max: int
    ) -> list[Deliver | Passivate | RemoteReply | Release | Interrupt | Routed | Resume | Ended]:
        """Takes up to `max` units of ready work: entity requests, idle instances, executions."""
    def register_entity(
        self,
        entity_type: str,
        concurrency: int,
        mailbox_capacity: int | None,
        max_idle_ms: int | None,
    ) -> None:
        """Registers an entity type with its mailbox options (None: unbounded / never)."""
    def set_max_resident(self, max_resident: int | None) -> None:
        """Bounds the resident entity instances (None: unbounded)."""
    def set_storage_options(self, poll_ms: int, registration_timeout_ms: int) -> None:
        """How often stored requests are read, and how long one of an unknown type waits."""
    def due_version(self) -> int:
        """The count of changes `due_changed` reports (read it before `next_due`)."""
    def due_changed(self, bridge: AsyncBridge, since: int) -> int:
        """Resolves when `next_due` may have changed by the source's own doing since `since`."""
    def poll_storage(self, deliver_at_ms: int | None = None, when_room: bool = False) -> None:
        """Reads the stored requests soon; at `deliver_at_ms`; or once a slot frees."""
    def offer(self, messages: Iterable[_Outgoing]) -> tuple[list[Refusal | None], list[Deliver]]:
        """Offers entity requests: one answer per request, and every request that may run now."""
    def done(self, finished: list[Deliver]) -> list[Deliver]:
        """These requests have their final reply (or were dropped); returns what may run now."""
    def drop_request(self, entity_type: str, entity_id: str, request_id: int) -> list[Deliver]:
        """Drops a waiting or running request (its caller gave up); returns what may run now."""
    def keep_alive(self, entity_type: str, entity_id: str, enabled: bool) -> bool:
        """Keeps an instance resident whatever its idle time; returns whether it is resident."""
    def evict(self, entity_type: str, entity_id: str) -> Drained:
        """Drops an instance; returns what it held: given to the host, and never given."""
    def resident(self) -> int:
        """Resident entity instances."""
    def mailbox_depths(self) -> list[tuple[str, int]]:
        """Entity requests waiting in the mailboxes (queued, or ready), by type, sorted."""
    def owns(self, entity_id: str) -> bool:
        """Whether this process serves the entity now (always, for a single engine)."""
    def owned_shards(self) -> list[str] | None:
        """The shards this runner serves, sorted; None for a single engine."""
    def await_replies(self, ids: list[int]) -> None:
        """Waits for the stored replies of these requests: they come as `RemoteReply`."""
    def forget_replies(self, ids: list[int]) -> None:
        """Stops waiting for these replies."""
    def await_executions(self, ids: list[str], suspended: bool = False) -> None:
        """Waits for the ends of these executions' runs elsewhere: each comes as `Ended`."""
    def forget_executions(self, ids: list[str]) -> None:
        """Stops waiting for these executions' ends."""
    def drained(self, shards: list[str]) -> Drained:
        """These shards' entities are finished: they leave the mailboxes; what they held."""
    def scheduled(self, execution_id: str, name: str, due_ms: int) -> None:
        """A timer was stored: into the wheel if it falls in the loaded window."""
    def resume(self, ids: Iterable[str]) -> None:
        """Resumes these executions: their snapshots are read and handed out as work."""
    def advance_to(self, now_ms: int) -> None:
        """Moves a manual clock to `now_ms` (never backwards); nothing on the wall clock."""
    def next_due(self) -> int | None:
        """When the source next needs time to move (ms), or None."""
    def busy(self) -> bool:
        """Whether the source holds work not yet taken."""
    def timers_in_memory(self) -> list[tuple[str, str]]:
        """The timers in its wheel, as (execution id, deferred name), sorted."""
    def close(self) -> None:
        """Stops the source; waits end with `ClosedError`. The store keeps what was not done."""

# awaiting Rust tasks (see plait/_bridge.py)

@final
class AsyncBridge:
    """One event loop's handle on Rust tasks: started with a token, results drained in batches."""

    def __new__(cls) -> AsyncBridge: ...
    def fileno(self) -> int:
        """The descriptor that turns readable when results are waiting."""

    def drain(self) -> list[tuple[int, bool, object]]:
        """Every finished result as `(token, ok, value)`; `value` is the exception when not ok."""

    def cancel(self, token: int) -> bool:
        """Stops the task behind `token`. Returns whether it was still running."""

    def __len__(self) -> int: ...

# crash-safety checks for the test suite

def _after_fork_in_child() -> None: ...
def _panic(message: str) -> None: ...
def _panic_async(bridge: AsyncBridge, message: str) -> int: ...
