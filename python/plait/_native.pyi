# Stub of the private extension module built from rust/src/py/. Checked against the compiled
# module by `python -m mypy.stubtest plait._native`.

from collections.abc import Iterable
from typing import Literal, TypeAlias, final

__all__ = [
    "DEFAULT_SHARDS_PER_GROUP",
    "AsyncBridge",
    "HashRing",
    "MemoryStore",
    "SnowflakeGenerator",
    "SqlStore",
    "TimerServiceRef",
    "TimerWheel",
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

_Status: TypeAlias = Literal["running", "suspended", "complete"]
# (workflow, payload, parent, status, result, interrupted)
_ExecutionRecord: TypeAlias = tuple[str, bytes, str | None, _Status, bytes | None, bool]

@final
class MemoryStore:
    """Executions, their journals, deferred results and timers, held in this process."""

    def __new__(cls) -> MemoryStore: ...
    def start(
        self, id: str, workflow: str, payload: bytes, parent: str | None = None
    ) -> _ExecutionRecord | None:
        """Records a new running execution unless `id` exists; returns the existing one, or None."""

    def execution(self, id: str) -> _ExecutionRecord | None:
        """The execution `id`, or None."""

    def snapshot(
        self, id: str
    ) -> tuple[_ExecutionRecord, list[tuple[str, int, bytes]], list[tuple[str, bytes]]] | None:
        """The execution, its step results `(key, seq, value)` and deferreds `(name, value)`."""

    def append(self, entries: Iterable[tuple[str, str, int, bytes]]) -> list[bool]:
        """Appends `(execution_id, key, seq, value)` step results, all or nothing.

        Returns, per entry, whether it was stored (False: the key already had a result).
        """

    def complete_deferred(self, id: str, name: str, value: bytes) -> bool:
        """Stores a deferred's result unless it has one; returns whether it was stored."""

    def set_status(self, id: str, status: _Status, result: bytes | None = None) -> None:
        """Moves an execution to `status` (`running`, `suspended` or `complete`) with `result`."""

    def interrupt(self, id: str) -> bool:
        """Records an interrupt request; False if the execution had completed."""

    def schedule_timer(self, execution_id: str, name: str, due_ms: int) -> bool:
        """Stores a durable timer unless one with that execution and name exists."""

    def remove_timer(self, execution_id: str, name: str) -> bool:
        """Forgets a timer; returns whether it was stored."""

    def timers(self) -> list[tuple[str, str, int]]:
        """Every stored timer as `(execution_id, name, due_ms)`, earliest first."""

    def timers_between(
        self, after_ms: int, until_ms: int
    ) -> tuple[list[tuple[str, str, int]], int | None]:
        """The timers due in `(after_ms, until_ms]`, earliest first, and the next due after.

        Returns `([(execution_id, name, due_ms)], next_due)`: `next_due` is when the first timer
        after `until_ms` is due, None if there is none. `after_ms` -1 takes every timer due up
        to `until_ms`. Ties come by execution id, then name.
        """

    def with_status(self, status: _Status) -> list[str]:
        """Ids of the executions with `status`."""

    def __len__(self) -> int: ...

# ops for SqlStore.write, applied in order in one transaction:
#   ("start", id, workflow, payload, parent) -> None if created, else the existing record
#   ("append", id, key, seq, value) -> stored (False: the key had a result, or unknown execution)
#   ("deferred", id, name, value) -> True stored, False had one, None unknown execution
#   ("status", id, status, result) -> False if complete or unknown; completing drops its timers
#   ("interrupt", id) -> True, False (complete), None (unknown execution)
#   ("timer", execution_id, name, due_ms) -> stored (False: exists, or unknown execution)
#   ("untimer", execution_id, name) -> removed
_Op: TypeAlias = (
    tuple[Literal["start"], str, str, bytes, str | None]
    | tuple[Literal["append"], str, str, int, bytes]
    | tuple[Literal["deferred"], str, str, bytes]
    | tuple[Literal["status"], str, _Status, bytes | None]
    | tuple[Literal["interrupt"], str]
    | tuple[Literal["timer"], str, str, int]
    | tuple[Literal["untimer"], str, str]
)

@final
class SqlStore:
    """The journal in SQLite (one file, WAL) or PostgreSQL; awaited through `_bridge.call`.

    Every method but `url` starts a Rust task and returns its token, which resolves as its
    docstring says: `await _bridge.call(lambda b: store.write(b, ops))`. Writes from every
    caller are committed together, one transaction per round (group commit); connection errors
    are retried. One engine per database and table prefix: `open` takes a lock held until
    `close`, the store's collection, or the process's death.

    Raises:
        StoreConnectError: The database cannot be reached or opened (URL shown, password
            masked).
        EngineLockedError: Another engine holds this database and prefix.
        EngineFencedError: Another engine took the database over; nothing more is written.
        StoreError: The database refused a statement, a read stayed unreachable for 30 s, or
            the store is closed.
    """

    @staticmethod
    def open(
        bridge: AsyncBridge,
        url: str,
        prefix: str = "plait_",
        durability: str = "full",
        lease_ttl_ms: int | None = None,
    ) -> int:
        """Opens, migrates and locks the store at `url`; resolves to a `SqlStore`.

        Args:
            bridge: The running loop's bridge.
            url: `sqlite://<path>` or `sqlite:<path>` (created if missing), or
                `postgres://...` / `postgresql://...`.
            prefix: Prefix of every table name: `[a-z_][a-z0-9_]{0,30}`.
            durability: `"full"` (a commit survives a crash or power cut) or `"normal"`
                (faster; a crash may lose the last commits but never corrupts).
            lease_ttl_ms: PostgreSQL: how long the engine's lease lasts unrenewed (default
                35,000); it is renewed every 10/35 of that.

        Raises:
            InvalidArgumentError: Another URL scheme, an in-memory SQLite URL, a bad prefix or
                durability.
        """

    def write(self, bridge: AsyncBridge, ops: Iterable[_Op]) -> int:
        """Queues the ops now; resolves to one result per op once they are committed.

        Batches apply in the order `write` was called. Cancelling the await does not withdraw
        the batch.

        Raises:
            InvalidArgumentError: An op is malformed (the message names `ops[<index>]`).
        """

    def snapshot(self, bridge: AsyncBridge, id: str) -> int:
        """Resolves to `(record, [(key, seq, value)], [(name, value)])` in write order, or None."""

    def snapshots(self, bridge: AsyncBridge, ids: Iterable[str]) -> int:
        """Resolves to a list with one snapshot (as `snapshot`'s) or None per id, in order.

        Reads a few hundred ids per query, each such chunk in one read transaction, so every
        snapshot is consistent in itself; for many executions at once (recovery).

        Raises:
            TypeError: `ids` is a single str, or an item is not a str (the message names
                `ids[<index>]`).
            InvalidArgumentError: An id is not valid Unicode (the message names `ids[<index>]`).
        """

    def execution(self, bridge: AsyncBridge, id: str) -> int:
        """Resolves to the execution record, or None."""

    def executions(self, bridge: AsyncBridge, ids: Iterable[str]) -> int:
        """Resolves to a list with one execution record or None per id, in order.

        Raises:
            TypeError: `ids` is a single str, or an item is not a str.
            InvalidArgumentError: An id is not valid Unicode.
        """

    def timers(self, bridge: AsyncBridge) -> int:
        """Resolves to every timer as `(execution_id, name, due_ms)`, earliest first."""

    def timers_between(self, bridge: AsyncBridge, after_ms: int, until_ms: int) -> int:
        """Resolves to `([(execution_id, name, due_ms)], next_due)`.

        The timers due in `(after_ms, until_ms]`, earliest first (ties by execution id, then
        name), read as a range of the index on due instants however many timers are stored;
        `next_due` is when the first timer after `until_ms` is due, None if there is none.
        `after_ms` -1 takes every timer due up to `until_ms`.
        """

    def with_status(self, bridge: AsyncBridge, status: _Status) -> int:
        """Resolves to the ids of the executions with `status`."""

    def lost(self, bridge: AsyncBridge) -> int:
        """Resolves to why the store lost its lease, or None once it closes (at once on SQLite)."""

    def close(self, bridge: AsyncBridge) -> int:
        """Commits what is queued, releases the lock and the connections; resolves to None."""

    @property
    def url(self) -> str:
        """The URL, with any password replaced by `***`."""

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
