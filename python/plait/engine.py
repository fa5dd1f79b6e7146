"""The engine: runs workflow executions by replay over a journal store.

A run executes the workflow body from the top. Each step (activity, deferred, clock) looks up
its result in the journal read at the start of the run; a missing activity result runs the
activity and is durable before the body continues. Awaiting a deferred with no result parks
the run; once no activity is in flight the run is cancelled and ends `Suspended`, holding no
memory. Completing the deferred (or the timer firing, or a child finishing) starts a new run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from plait import _bridge, _context
from plait._native import Op, Store, TimerWheel
from plait.clocks import Clock, SystemClock, seconds
from plait.errors import (
    Defect,
    DeferredTokenError,
    EngineClosedError,
    EngineFencedError,
    Interrupted,
    JournalDecodeError,
    NoEngineError,
    NonDeterminismError,
    NotInWorkflowError,
    SuspendedRetryExhaustedError,
    UnknownExecutionError,
    WorkflowNotImplementedError,
)
from plait.exits import Complete, Exit, ExitCodec, Failure, Success, Suspended, defect_of
from plait.journal import Batch, Journal, Snapshot

if TYPE_CHECKING:
    from plait.activity import Activity
    from plait.deferred import DurableDeferred
    from plait.workflow import Workflow

__all__ = ["Engine", "WorkflowInstance", "current_instance"]

log = logging.getLogger("plait")

_VOID = b'{"_tag":"Success","value":null}'
#: Timers due within this much of now are in memory (the wheel); later ones only in the store.
TIMER_HORIZON_MS = 60_000
#: Executions resumed at once on start and by firing timers (each: a read, then its run).
RECOVERY_CONCURRENCY = 1_000
_registry: dict[str, Workflow[Any, Any]] = {}


class _StoredFirst(Exception):
    """The store kept another result for a step this run made: replay with the stored one.

    First write wins. A run whose step result was not stored must not go on with it: it stops
    without recording anything and a new run replays the journal.
    """

    def __init__(self, execution_id: str, key: str) -> None:
        super().__init__(f"execution {execution_id}: the store kept an earlier result of {key}")


def register(workflow: Workflow[Any, Any]) -> None:
    """Makes `workflow` findable by name, for runs started by a deferred or a timer."""
    _registry[workflow.name] = workflow


def engine_for(engine: Engine | None) -> Engine:
    """`engine`, else the engine of the current run, else the one of `async with engine:`."""
    if engine is not None:
        return engine
    run = _context.current_run.get()
    if run is not None:
        return run.engine
    found = _context.current_engine.get()
    if found is None:
        msg = "no engine: pass engine=, or call inside `async with engine:`"
        raise NoEngineError(msg)
    return found


def current_instance() -> WorkflowInstance:
    """The workflow run this code is part of.

    Raises:
        NotInWorkflowError: Called outside a workflow run.
    """
    return WorkflowInstance(_run_or_raise("current_instance()"))


def _run_or_raise(what: str) -> _Run:
    run = _context.current_run.get()
    if run is None:
        msg = f"{what} can only be used inside a workflow run"
        raise NotInWorkflowError(msg)
    return run


class WorkflowInstance:
    """What a run knows about itself.

    Attributes:
        execution_id: The execution this run belongs to.
        workflow: The workflow's name.
        interrupted: Whether the run ended because the execution was interrupted; workflow
            finalizers see it, the body never does.
        suspended: Whether the run is ending as `Suspended`.
    """

    __slots__ = ("_run", "execution_id", "workflow")

    def __init__(self, run: _Run) -> None:
        self._run = run
        self.execution_id = run.execution.id
        self.workflow = run.execution.workflow.name

    @property
    def interrupted(self) -> bool:  # noqa: D102
        return self._run.interrupted

    @property
    def suspended(self) -> bool:  # noqa: D102
        return self._run.suspended


class _Execution:
    """An execution this engine is running, or keeping state for between runs."""

    __slots__ = (
        "children",
        "compensated",
        "finalizers",
        "id",
        "interrupted",
        "parent",
        "payload",
        "run",
        "run_waiters",
        "waiters",
        "wake",
        "workflow",
    )

    def __init__(
        self, execution_id: str, workflow: Workflow[Any, Any], payload: Any, parent: str | None
    ) -> None:
        self.id = execution_id
        self.workflow = workflow
        self.payload = payload
        self.parent = parent
        self.interrupted = False
        self.run: _Run | None = None
        # Waiters for the final result, and for the end of the current run (child awaits).
        self.waiters: list[asyncio.Future[Complete[Any]]] = []
        self.run_waiters: list[asyncio.Future[Complete[Any] | Suspended]] = []
        # The workflow scope: lives across runs of this execution in this process.
        self.finalizers: list[Callable[[Exit], Awaitable[None] | None]] = []
        # Which `with_compensation` calls (by order in a run) registered their undo.
        self.compensated: set[int] = set()
        self.children: set[str] = set()
        self.wake = False


class _Park:
    """One await parked on a deferred with no result yet."""

    __slots__ = ("future", "owner")

    def __init__(self, future: asyncio.Future[bytes], owner: _Run | _Race) -> None:
        self.future = future
        self.owner = owner

    def release(self) -> None:
        self.owner.unpark()


class _Race:
    """Branches of a race; parked as a whole only when no branch can still win.

    The race takes one position in the run's call order, shared by every step of its
    branches: a replay that finds the race's result stored runs no branch.
    """

    __slots__ = ("branches", "failed", "parked", "run", "run_parked", "seq")

    def __init__(self, run: _Run, branches: int, seq: int) -> None:
        self.run = run
        self.branches = branches
        self.seq = seq
        self.parked = 0
        self.failed = 0
        self.run_parked = False

    def park(self) -> None:
        self.parked += 1
        self.check()

    def unpark(self) -> None:
        self.parked -= 1
        if self.run_parked:
            self.run_parked = False
            self.run.unpark()

    def check(self) -> None:
        if not self.run_parked and self.parked and self.parked + self.failed >= self.branches:
            self.run_parked = True
            self.run.park()


class _Run:
    """One run of an execution: the journal it replays and its suspension bookkeeping."""

    __slots__ = (
        "body_done",
        "compensations",
        "counts",
        "deferreds",
        "engine",
        "execution",
        "fatal",
        "in_flight",
        "interrupted",
        "journal",
        "next_seq",
        "parked",
        "parks",
        "seqs",
        "suspend_scheduled",
        "suspended",
        "task",
        "unsynced",
    )

    def __init__(self, engine: Engine, execution: _Execution) -> None:
        self.engine = engine
        self.execution = execution
        self.journal: dict[str, bytes] = {}
        self.seqs: dict[int, str] = {}
        self.deferreds: dict[str, bytes] = {}
        self.counts: dict[tuple[str, int], int] = {}
        self.compensations = 0
        self.next_seq = 0
        self.in_flight = 0
        self.parked = 0
        self.parks: dict[str, list[_Park]] = {}
        self.suspended = False
        self.suspend_scheduled = False
        self.interrupted = False
        self.body_done = False
        self.fatal: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        # This run's step results queued for a commit and not yet known to be durable: the
        # batch, the op's index there, and the step's key.
        self.unsynced: list[tuple[Batch, int, str]] = []

    def load(self, snapshot: Snapshot) -> None:
        for entry in snapshot.entries:
            key = entry.key
            self.journal[key] = entry.value
            self.seqs[entry.seq] = key
        for deferred in snapshot.deferreds:
            self.deferreds[deferred.name] = deferred.value

    # Steps -------------------------------------------------------------------------------

    def key_of(self, name: str, attempt: int, *, consume: bool) -> str:
        """The journal key of the next use of `name` at `attempt` (`name#2/1` the 2nd time)."""
        count = self.counts.get((name, attempt), 0) + 1
        if consume:
            self.counts[(name, attempt)] = count
        return f"{name}/{attempt}" if count == 1 else f"{name}#{count}/{attempt}"

    def position(self) -> int:
        """The next position in call order: inside a race, the race's own."""
        race = _context.current_race.get()
        if race is not None and race.run is self:
            return race.seq
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def step(self, name: str, attempt: int) -> tuple[str, int]:
        key = self.key_of(name, attempt, consume=True)
        race = _context.current_race.get()
        if race is not None and race.run is self:
            return key, race.seq  # a race's branches may step in any order: not checked
        seq = self.next_seq
        self.next_seq += 1
        expected = self.seqs.get(seq)
        if expected is not None and expected != key:
            self.fail(NonDeterminismError(self.execution.id, seq, expected, key))
        return key, seq

    def fail(self, error: BaseException) -> NoReturn:
        """Stops the run without recording anything; user code cannot swallow this."""
        if self.fatal is None:
            self.fatal = error
        raise error

    def decode(self, codec: ExitCodec, data: bytes) -> Exit:
        try:
            return codec.decode(data)
        except JournalDecodeError as err:
            where = f"workflow {self.execution.workflow.name!r}, execution {self.execution.id}"
            self.fail(JournalDecodeError(f"{where}: {err}"))

    async def activity(self, activity: Activity[Any], attempt: int) -> Any:
        key, seq = self.step(activity.name, attempt)
        stored = self.journal.get(key)
        if stored is not None:
            return self.decode(activity.codec, stored).unwrap()
        self.in_flight += 1
        try:
            if self.unsynced:  # the body may have side effects: what came before is durable
                await self.sync()
            if activity.is_async:  # the common case, without run_body's extra coroutine
                try:
                    outcome: Exit = Success(await activity.execute())
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise
                    outcome = await activity.run_body(self.engine)
                except Exception as exc:  # the codec sorts declared errors from defects
                    outcome = Failure(exc)
            else:
                outcome = await activity.run_body(self.engine)
            encoded, outcome = activity.codec.settle(outcome)
            self.engine.append(self, key, seq, encoded)
        finally:
            self.in_flight -= 1
            self.maybe_suspend()
        return outcome.unwrap()

    async def sync(self) -> None:
        """Waits until every step result of this run is durable.

        Results are committed in the background while the body goes on; nothing leaves the
        run (an activity body, a child, a finalizer, the result) before they are durable.
        A commit that failed stops the run.
        """
        unsynced = self.unsynced
        journal = self.engine._journal()
        while unsynced:
            batch, index, key = unsynced[-1]
            if not batch.done:
                try:
                    await journal.wait(batch, index)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self.fail(err)
                continue
            self.synced(batch, index, key)
            unsynced.pop()

    def synced(self, batch: Batch, index: int, key: str) -> None:
        """Checks the committed result of step `key`: op `index` of `batch`."""
        error = batch.error_of(index)
        if error is not None:
            self.fail(error)
        if batch.results[index] is False:
            self.fail(_StoredFirst(self.execution.id, key))

    async def await_deferred(self, deferred: DurableDeferred[Any]) -> Any:
        return self.decode(deferred.codec, await self.deferred_value(deferred.name)).unwrap()

    async def deferred_value(self, name: str) -> bytes:
        stored = self.deferreds.get(name)
        if stored is not None:
            return stored
        future: asyncio.Future[bytes] = self.engine._require_loop().create_future()
        race = _context.current_race.get()
        owner: _Run | _Race = self if race is None or race.run is not self else race
        park = _Park(future, owner)
        self.parks.setdefault(name, []).append(park)
        owner.park()
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                parks = self.parks.get(name, [])
                if park in parks:
                    parks.remove(park)
                    park.release()

    def deliver(self, name: str, value: bytes) -> bool:
        """A deferred completed during this run. Returns whether a parked await took it."""
        self.deferreds[name] = value
        taken = False
        for park in self.parks.pop(name, []):
            park.release()
            if not park.future.done():
                park.future.set_result(value)
                taken = True
        # A run already suspending (its parked awaits being cancelled) needs a new run.
        return taken and not self.suspended

    async def wait_forever(self) -> None:
        """Parks the run for good: it suspends once no activity is in flight."""
        future: asyncio.Future[bytes] = self.engine._require_loop().create_future()
        self.park()
        try:
            await future
        finally:
            self.unpark()

    # Suspension ----------------------------------------------------------------------------

    def park(self) -> None:
        self.parked += 1
        self.maybe_suspend()

    def unpark(self) -> None:
        self.parked -= 1

    def maybe_suspend(self) -> None:
        if self.parked and not self.in_flight and not self.suspend_scheduled:
            self.suspend_scheduled = True
            self.engine._require_loop().call_soon(self._suspend_if_still_parked)

    def _suspend_if_still_parked(self) -> None:
        self.suspend_scheduled = False
        if self.parked and not self.in_flight and not self.body_done and self.task is not None:
            self.suspended = True
            self.task.cancel()


class Engine:
    """Runs workflows: replays executions, stores step results, fires durable timers.

    Use it as an async context manager; workflow calls inside the block find it without an
    `engine=` argument. `Engine.sqlite(path)` (the embedded default) and
    `Engine.postgres(url)` keep every execution across restarts and `kill -9`;
    `Engine.memory()` keeps them in this process only.

    Example:
        >>> import asyncio, plait
        >>> Double = plait.Workflow("Double", payload={"x": int}, success=int)
        >>> @Double.implement
        ... async def double(payload, execution_id):
        ...     return await plait.Activity("Mul", success=int, execute=lambda: payload.x * 2)
        >>> async def main() -> int:
        ...     async with plait.Engine.memory():
        ...         return await Double.execute({"x": 21})
        >>> asyncio.run(main())
        42
    """

    def __init__(
        self,
        store: Store | Callable[[], Awaitable[Store]],
        *,
        clock: Clock | None = None,
    ) -> None:
        self._open: Callable[[], Awaitable[Store]] | None = None
        self.store: Store | None
        self.journal: Journal | None
        if isinstance(store, Store):
            self.store, self.journal = store, Journal(store)
        else:
            self.store, self.journal, self._open = None, None, store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._live: dict[str, _Execution] = {}
        self._resuming: set[str] = set()
        self._rewake: set[str] = set()
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._unimplemented_seen: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._context_token: contextvars.Token[Engine | None] | None = None
        self._base_context: contextvars.Context | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._wheel: TimerWheel | None = None
        # Timers due within TIMER_HORIZON_MS, in the wheel: (execution id, deferred) by wheel id.
        self._timers: dict[int, tuple[str, str]] = {}
        self._timer_keys: dict[tuple[str, str], int] = {}
        self._timer_ids = itertools.count(1)
        # Stored timers due up to here are in the wheel; the next one after, if known.
        self._timers_loaded_until = -1
        self._timers_stored_next: int | None = None
        # Work of recovery (timers that fired, executions found running) and its workers.
        self._recovery: collections.deque[tuple[str, str | None]] = collections.deque()
        self._recovery_workers = 0
        self._timers_changed: asyncio.Event | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        # Why the engine stopped on its own: another engine took the database over.
        self._fenced: EngineFencedError | None = None

    @classmethod
    def memory(cls, *, clock: Clock | None = None) -> Engine:
        """An engine whose journal lives in this process (in Rust); nothing survives it."""
        return cls(Store.memory(), clock=clock)

    @classmethod
    def sqlite(
        cls,
        path: str | os.PathLike[str] = "plait.db",
        *,
        prefix: str = "plait_",
        durability: Literal["full", "normal"] = "full",
        clock: Clock | None = None,
    ) -> Engine:
        """An engine on a SQLite file (created if missing): no server, survives `kill -9`.

        Args:
            path: The database file.
            prefix: Prefix of plait's table names.
            durability: `"full"` (default): a step is on disk before its workflow goes on, so
                it survives a crash or a power cut (WAL, `synchronous=FULL`). `"normal"`:
                faster, may lose the last commits on a power cut (never corrupts).
            clock: The time source (default: the system clock).
        """
        url = f"sqlite://{os.fspath(path)}"
        return cls.url(url, prefix=prefix, durability=durability, clock=clock)

    @classmethod
    def postgres(
        cls,
        url: str,
        *,
        prefix: str = "plait_",
        durability: Literal["full", "normal"] = "full",
        lease_ttl: timedelta | float | None = None,
        clock: Clock | None = None,
    ) -> Engine:
        """An engine on PostgreSQL (`postgres://user:password@host/db`).

        The engine holds a lease on the database (and table prefix) that the database checks
        in every commit: if another engine takes the database over, this one's writes are
        refused and it shuts down (`EngineFencedError`).

        Args:
            url: The database.
            prefix: Prefix of plait's table names.
            durability: `"full"` (default), or `"normal"`: `synchronous_commit` off, faster,
                may lose the last commits if the server crashes.
            lease_ttl: How long the lease outlives a paused or cut-off engine (default 35 s).
                A crashed engine's lease goes at once: the database sees its session end.
            clock: The time source (default: the system clock).
        """
        return cls.url(url, prefix=prefix, durability=durability, lease_ttl=lease_ttl, clock=clock)

    @classmethod
    def url(
        cls,
        url: str,
        *,
        prefix: str = "plait_",
        durability: str = "full",
        lease_ttl: timedelta | float | None = None,
        clock: Clock | None = None,
    ) -> Engine:
        """An engine on the database at `url` (`sqlite://...` or `postgres://...`)."""
        lease_ttl_ms = None if lease_ttl is None else math.ceil(seconds(lease_ttl) * 1000)

        async def open_store() -> Store:
            store: Store = await _bridge.call(
                lambda bridge: Store.open(bridge, url, prefix, durability, lease_ttl_ms)
            )
            return store

        return cls(open_store, clock=clock)

    # Lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        self._context_token = _context.current_engine.set(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._context_token is not None:
            _context.current_engine.reset(self._context_token)
            self._context_token = None
        await self.close()

    async def start(self) -> None:
        """Opens the store and recovers what was in flight.

        Executions that were running run again; durable timers are loaded (those already due
        fire at once).

        Raises:
            StoreConnectError: The database cannot be reached (its URL, password masked).
            EngineLockedError: Another engine runs on this database.
        """
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        if self._open is not None:
            store = await self._open()
            self.store, self.journal = store, Journal(store)
        journal = self._journal()
        journal.bind(loop)
        self._loop = loop
        self._closing = False
        self._fenced = None
        ctx = contextvars.copy_context()
        for var in (_context.current_run, _context.current_race):
            ctx.run(var.set, None)
        ctx.run(_context.current_attempt.set, 1)
        self._base_context = ctx
        self._wheel = TimerWheel(now_ms=self.clock.now_ms())
        self._timers_changed = asyncio.Event()
        self._timers_loaded_until = -1
        await self._load_timers(self.clock.now_ms())
        self._timer_task = self._loop.create_task(self._fire_timers(), context=ctx)
        self._timer_task.add_done_callback(_log_crash)
        if self.store is not None and not journal.immediate:
            self._lease_task = self._loop.create_task(self._watch_lease(self.store), context=ctx)
            self._lease_task.add_done_callback(_log_crash)
        for execution_id in await journal.with_status("running"):
            self._recover(execution_id, None)

    async def close(self) -> None:
        """Stops every run and interrupts waiting callers with `EngineClosedError`.

        The executions stay stored; a durable engine started later resumes them. After the
        engine lost the database to another one, callers get `EngineFencedError` instead.
        """
        if self._loop is None:
            return
        self._closing = True
        tasks = [ex.run.task for ex in self._live.values() if ex.run and ex.run.task]
        tasks += self._background
        for task in (self._timer_task, self._lease_task):
            if task is not None and task is not asyncio.current_task():
                tasks.append(task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ex in self._live.values():
            waiters: list[asyncio.Future[Any]] = [*ex.waiters, *ex.run_waiters]
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(
                        self._fenced
                        or EngineClosedError(ex.id, f"engine closed while waiting for {ex.id}")
                    )
        self._live.clear()
        self._recovery.clear()
        self._timers.clear()
        self._timer_keys.clear()
        self._loop = None
        self._timer_task = None
        self._lease_task = None
        if self._open is not None and self.journal is not None:
            journal, self.journal, self.store = self.journal, None, None
            await journal.close()

    async def _watch_lease(self, store: Store) -> None:
        """Shuts the engine down if its lease on the database is lost.

        The database refuses this engine's commits from then on (they are fenced), so its runs
        could only fail: they stop now, and their callers hear `EngineFencedError`.
        """
        why: str | None = await _bridge.watch(store.lost)
        if why is None or self._closing:
            return
        self._fenced = EngineFencedError(
            f"this engine lost its lease on {store.url} ({why}); another engine runs its "
            "executions now, and this one stops"
        )
        log.warning("%s", self._fenced)
        await self.close()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            if self._fenced is not None:
                raise self._fenced
            msg = "the engine is not started: use `async with engine:`"
            raise NoEngineError(msg)
        return self._loop

    def _journal(self) -> Journal:
        if self.journal is None:
            msg = "the engine is not started: use `async with engine:`"
            raise NoEngineError(msg)
        return self.journal

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Runs `work` in the background, kept until done; failures are logged.

        The task runs `work` itself, not a wrapper awaiting it: a task cancelled before its
        first step (the engine closing just after starting it) then closes `work` instead of
        leaving it never awaited.
        """
        assert self._base_context is not None
        task = self._require_loop().create_task(work, context=self._base_context.copy())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _write(self, op: Op) -> Awaitable[Any]:
        return self._journal().write(op)

    # Executions ----------------------------------------------------------------------------

    def _workflow(self, name: str) -> Workflow[Any, Any]:
        workflow = self._workflows.get(name) or _registry.get(name)
        if workflow is None or workflow.handler is None:
            msg = f"workflow {name!r} has no implementation registered"
            raise WorkflowNotImplementedError(msg)
        return workflow

    async def execute(
        self,
        workflow: Workflow[Any, Any],
        payload: Any,
        *,
        discard: bool = False,
    ) -> Any:
        """Starts or joins the execution of `workflow` for `payload` (a validated model).

        Waits for its result unless `discard`.
        """
        self._require_loop()
        if workflow.handler is None:
            msg = (
                f"workflow {workflow.name!r} has no implementation: "
                f"register one with @{workflow.name}.implement"
            )
            raise WorkflowNotImplementedError(msg)
        self._workflows[workflow.name] = workflow
        execution_id = workflow.execution_id(payload)
        parent = _context.current_run.get()
        if parent is not None and parent.engine is not self:
            parent = None
        if parent is not None and parent.unsynced:
            await parent.sync()
        await self._attach(workflow, execution_id, payload, parent)
        if discard:
            return execution_id
        if parent is not None:
            return await self._await_child(parent, execution_id)
        if workflow.suspended_retry is None:
            ex = self._live.get(execution_id)
            if ex is not None and ex.run is not None:  # running: wait for its completion
                waiter: asyncio.Future[Complete[Any]] = self._require_loop().create_future()
                ex.waiters.append(waiter)
                return (await waiter).exit.unwrap()
        result = await self._await_complete(execution_id, workflow)
        return result.exit.unwrap()

    async def _attach(
        self, workflow: Workflow[Any, Any], execution_id: str, payload: Any, parent: _Run | None
    ) -> None:
        if parent is not None:
            parent.execution.children.add(execution_id)
        if execution_id in self._live:
            return
        parent_id = parent.execution.id if parent is not None else None
        # Held from now, so concurrent callers of the same id join this execution. No payload
        # until the start creates the execution: if it exists, its stored payload is the one a
        # run uses (decoded by `_resume`, maybe a concurrent one, such as recovery's).
        ex = _Execution(execution_id, workflow, None, parent_id)
        self._live[execution_id] = ex
        existing = await self._write(
            Op.start(execution_id, workflow.name, workflow.encode_payload(payload), parent_id)
        )
        if existing is None:
            ex.payload = payload
            self._launch(ex, None)
            return
        if existing.status == "running":
            await self._resume(execution_id)
        elif existing.status == "complete" and not ex.waiters:
            self._live.pop(execution_id, None)

    def _launch(self, ex: _Execution, snapshot: Snapshot | None) -> None:
        loop = self._require_loop()
        assert self._base_context is not None
        run = _Run(self, ex)
        if snapshot is not None:
            run.load(snapshot)
        ex.run = run
        ex.wake = False
        ctx = self._base_context.copy()
        ctx.run(_context.current_run.set, run)
        run.task = loop.create_task(self._drive(run), context=ctx)

    async def _resume(self, execution_id: str) -> bool:
        """Starts a new run of a stored execution that is not running here.

        Returns whether it did (not when running already, complete, or unknown).
        """
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            ex.wake = True
            return False
        if execution_id in self._resuming:
            self._rewake.add(execution_id)
            return False
        self._resuming.add(execution_id)
        try:
            snapshot = await self._journal().snapshot(execution_id)
            if snapshot is None:
                return False
            record = snapshot.execution
            name, status = record.workflow, record.status
            if status == "complete":
                return False
            ex = self._live.get(execution_id)
            if ex is None or ex.payload is None:
                if ex is not None:
                    workflow = ex.workflow
                elif (found := self._workflows.get(name) or _registry.get(name)) is not None:
                    workflow = found
                else:
                    self._unimplemented(name, execution_id)
                    return False
                try:
                    payload = workflow.decode_payload(record.payload)
                except JournalDecodeError as err:
                    self._fail_waiters(
                        execution_id, JournalDecodeError(f"execution {execution_id}: {err}")
                    )
                    raise
                if ex is None:
                    ex = _Execution(execution_id, workflow, payload, record.parent)
                    self._live[execution_id] = ex
                ex.payload = payload
            ex.interrupted = ex.interrupted or record.interrupted
            if status != "running":
                await self._write(Op.status(execution_id, "running", None))
            if ex.run is not None:  # started while we read
                return False
            self._launch(ex, snapshot)
        finally:
            self._resuming.discard(execution_id)
        if execution_id in self._rewake:
            self._rewake.discard(execution_id)
            ex.wake = True
        return True

    def _recover(self, execution_id: str, timer: str | None) -> None:
        """Queues the resumption of an execution (found running on start), or its timer `timer`.

        `RECOVERY_CONCURRENCY` workers take them in order.
        """
        self._recovery.append((execution_id, timer))
        if self._recovery_workers < RECOVERY_CONCURRENCY:
            self._recovery_workers += 1
            self._spawn(self._recovery_worker())

    async def _recovery_worker(self) -> None:
        try:
            while self._recovery:
                execution_id, timer = self._recovery.popleft()
                try:
                    if timer is None:
                        await self._resume(execution_id)
                    else:
                        await self._fire(execution_id, timer)
                except Exception:
                    log.exception("recovery of execution %s failed", execution_id)
        finally:
            self._recovery_workers -= 1

    def _unimplemented(self, workflow_name: str, execution_id: str) -> None:
        """Notes once per workflow that its executions wait for an engine implementing it."""
        if workflow_name not in self._unimplemented_seen:
            self._unimplemented_seen.add(workflow_name)
            log.warning(
                "executions of workflow %r (such as %s) wait for an engine that implements it",
                workflow_name,
                execution_id,
            )

    def _fail_waiters(self, execution_id: str, error: BaseException) -> None:
        ex = self._live.get(execution_id)
        if ex is None:
            return
        waiters: list[asyncio.Future[Any]] = [*ex.waiters, *ex.run_waiters]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        ex.waiters.clear()
        ex.run_waiters.clear()

    async def _drive(self, run: _Run) -> None:
        ex = run.execution
        workflow = ex.workflow
        handler = workflow.handler
        assert handler is not None
        outcome: Exit | None = None
        try:
            value = await handler(ex.payload, ex.id)
            run.body_done = True
            outcome = Success(value)
        except asyncio.CancelledError:
            run.body_done = True
            if not run.suspended or self._closing:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:
            run.body_done = True
            outcome = Failure(exc)
        result: Complete[Any] | Suspended | BaseException = self._into_result(run, outcome)
        if isinstance(result, Complete) and ex.finalizers and run.unsynced:
            # Finalizers and compensations act on the world: the steps they answer to first.
            try:
                await run.sync()
            except Exception as err:
                result = err
        if isinstance(result, Complete):
            result, encoded = await self._close_scope(run, result)
            await self._finish(run, result, encoded)
        else:
            await self._finish(run, result, None)

    def _into_result(
        self, run: _Run, outcome: Exit | None
    ) -> Complete[Any] | Suspended | BaseException:
        ex = run.execution
        workflow = ex.workflow
        if run.fatal is not None:
            return run.fatal
        if outcome is None:
            result: Complete[Any] | Suspended = Suspended(None)
        elif isinstance(outcome, Failure) and workflow.suspend_on_failure:
            run.suspended = True
            result = Suspended(defect_of(outcome.error))
        elif (
            isinstance(outcome, Failure)
            and not workflow.capture_defects
            and not isinstance(outcome.error, (*workflow.codec.error_types, Interrupted))
        ):
            return defect_of(outcome.error)
        else:
            result = Complete(outcome)
        if ex.interrupted:
            run.interrupted = True
            run.suspended = False
            result = Complete(Failure(Interrupted(ex.id)))
        return result

    async def _close_scope(self, run: _Run, result: Complete[Any]) -> tuple[Complete[Any], bytes]:
        """Runs the workflow scope's finalizers, last added first, with the final exit.

        Returns the final result and its encoding.
        """
        ex = run.execution
        encoded, exit_ = ex.workflow.codec.settle(result.exit)
        if not ex.finalizers:
            return Complete(exit_), encoded
        while ex.finalizers:
            finalizer = ex.finalizers.pop()
            try:
                pending = finalizer(exit_)
                if pending is not None:
                    await pending
            except Exception as exc:
                log.exception("finalizer of execution %s failed", ex.id)
                if isinstance(exit_, Success):
                    exit_ = Failure(defect_of(exc))
        encoded, exit_ = ex.workflow.codec.settle(exit_)
        return Complete(exit_), encoded

    async def _finish(
        self, run: _Run, result: Complete[Any] | Suspended | BaseException, encoded: bytes | None
    ) -> None:
        ex = run.execution
        # The result is durable before anyone hears of it; meanwhile `ex.run` stays set, so a
        # completion arriving now marks the execution for a new run instead of starting one.
        if isinstance(result, Complete):
            assert encoded is not None
            if not await self._write(Op.status(ex.id, "complete", encoded)):
                result = await self._result_stored_first(ex, result)
            ex.finalizers.clear()
            ex.compensated.clear()
        elif isinstance(result, Suspended):
            cause = (
                None
                if result.cause is None
                else ExitCodec("cause", None, None).settle(Failure(result.cause))[0]
            )
            if not await self._write(Op.status(ex.id, "suspended", cause)):
                result = await self._result_stored_first(ex, result)
        ex.run = None
        run.task = None  # the task holds the run in its context: no cycle left behind
        if isinstance(result, _StoredFirst):
            # Nothing of this run was recorded: a new run replays the stored results.
            log.warning("%s; replaying it", result)
            await self._resume(ex.id)
            return
        for waiter in ex.run_waiters:
            if not waiter.done():
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)
        ex.run_waiters.clear()
        if isinstance(result, BaseException):
            for final in ex.waiters:
                if not final.done():
                    final.set_exception(result)
            ex.waiters.clear()
        elif isinstance(result, Complete):
            for final in ex.waiters:
                if not final.done():
                    final.set_result(result)
            ex.waiters.clear()
            if ex.parent is not None:
                self._spawn(self._resume(ex.parent))
            if isinstance(result.exit, Failure) and isinstance(result.exit.error, Interrupted):
                for child in ex.children:
                    self._spawn(self.interrupt(child))
        elif ex.wake:
            await self._resume(ex.id)
            return
        if not ex.waiters and not ex.finalizers and ex.run is None:
            self._live.pop(ex.id, None)

    async def _result_stored_first(
        self, ex: _Execution, result: Complete[Any] | Suspended
    ) -> Complete[Any] | Suspended:
        """The result when the store refused this run's: the one it holds (first write wins).

        The store refuses a status only for an execution that is complete already.
        """
        stored = await self._stored_result(ex.id, ex.workflow)
        if isinstance(stored, Complete):
            log.warning(
                "execution %s was complete in the store already; its callers get the stored "
                "result, not this run's",
                ex.id,
            )
            return stored
        return result

    async def _stored_result(
        self, execution_id: str, workflow: Workflow[Any, Any]
    ) -> Complete[Any] | Suspended | None:
        record = await self._journal().execution(execution_id)
        if record is None:
            return None
        status, data = record.status, record.result
        if status == "complete":
            assert data is not None
            return Complete(workflow.codec.decode(data))
        if status == "suspended":
            if data is None:
                return Suspended(None)
            cause = ExitCodec("cause", None, None).decode(data)
            return Suspended(
                cause.error
                if isinstance(cause, Failure) and isinstance(cause.error, Defect)
                else None
            )
        return None

    async def _await_complete(
        self, execution_id: str, workflow: Workflow[Any, Any]
    ) -> Complete[Any]:
        delays = None if workflow.suspended_retry is None else workflow.suspended_retry.delays()
        while True:
            ex = self._live.get(execution_id)
            if ex is None or ex.run is None:
                stored = await self._stored_result(execution_id, workflow)
                if isinstance(stored, Complete):
                    return stored
                ex = self._live.get(execution_id)
            if ex is None:
                # Kept between runs for the waiter; a later `_resume` runs it with this payload.
                record = await self._journal().execution(execution_id)
                if record is None:
                    raise UnknownExecutionError(f"unknown execution {execution_id!r}")
                ex = self._live.get(execution_id)
                if ex is None:
                    payload = workflow.decode_payload(record.payload)
                    ex = _Execution(execution_id, workflow, payload, record.parent)
                    self._live[execution_id] = ex
            loop = self._require_loop()
            if delays is None:
                waiter: asyncio.Future[Complete[Any]] = loop.create_future()
                ex.waiters.append(waiter)
                if ex.run is None:
                    await self._rejoin(ex, workflow, waiter)
                return await waiter
            if ex.run is not None:
                # Running: only a suspension starts the next delay of the schedule.
                run_end: asyncio.Future[Complete[Any] | Suspended] = loop.create_future()
                ex.run_waiters.append(run_end)
                result = await run_end
                if isinstance(result, Complete):
                    return result
                continue
            delay = next(delays, None)
            if delay is None:
                msg = f"{workflow.name}.execute: suspended_retry exhausted for {execution_id}"
                raise SuspendedRetryExhaustedError(msg)
            waiter = loop.create_future()
            ex.waiters.append(waiter)
            sleep = asyncio.ensure_future(self.clock.sleep(delay))
            try:
                await asyncio.wait((waiter, sleep), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
            if waiter.done():
                return waiter.result()
            ex.waiters.remove(waiter)
            await self._resume(execution_id)

    async def _rejoin(
        self, ex: _Execution, workflow: Workflow[Any, Any], waiter: asyncio.Future[Complete[Any]]
    ) -> None:
        """Makes sure a waiter registered on an execution with no run here gets a result.

        The state read before `waiter` was registered may be stale (a run started and ended
        meanwhile), and an execution stored as running with no run (its last one failed, as
        with a defect it does not capture) needs a new one, or the waiter would wait forever.
        """
        stored = await self._stored_result(ex.id, workflow)
        if isinstance(stored, Complete):
            if not waiter.done():
                waiter.set_result(stored)
                ex.waiters.remove(waiter)
        elif stored is None and ex.run is None:
            # A payload that no longer decodes: `_resume` failed the waiters, `waiter` included.
            with contextlib.suppress(JournalDecodeError):
                await self._resume(ex.id)

    async def _await_child(self, parent: _Run, execution_id: str) -> Any:
        ex = self._live.get(execution_id)
        parent.in_flight += 1
        try:
            if ex is not None and ex.run is not None:
                waiter: asyncio.Future[Complete[Any] | Suspended] = (
                    self._require_loop().create_future()
                )
                ex.run_waiters.append(waiter)
                result = await waiter
            else:
                workflow = (
                    ex.workflow
                    if ex is not None
                    else self._workflow(await self._name_of(execution_id))
                )
                result = await self._stored_result(execution_id, workflow) or Suspended(None)
        finally:
            parent.in_flight -= 1
            parent.maybe_suspend()
        if isinstance(result, Complete):
            return result.exit.unwrap()
        await parent.wait_forever()
        raise AssertionError  # pragma: no cover - a parked run is cancelled, never resumed

    async def _name_of(self, execution_id: str) -> str:
        record = await self._journal().execution(execution_id)
        if record is None:
            raise UnknownExecutionError(f"unknown execution {execution_id!r}")
        return record.workflow

    # Operations on stored executions --------------------------------------------------------

    async def poll(
        self, workflow: Workflow[Any, Any], execution_id: str
    ) -> Complete[Any] | Suspended | None:
        """The result of the execution: None if unknown or running."""
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            return None
        return await self._stored_result(execution_id, workflow)

    async def interrupt(self, execution_id: str) -> None:
        """Interrupts the execution.

        Its current run (or a new one) ends it as `Interrupted`, running compensations and
        finalizers, and interrupting its children.
        """
        self._require_loop()
        if not await self._write(Op.interrupt(execution_id)):
            return
        ex = self._live.get(execution_id)
        if ex is not None:
            ex.interrupted = True
        await self._resume(execution_id)

    async def resume(self, execution_id: str) -> None:
        """Starts a new run of a suspended execution (nothing if running or complete)."""
        self._require_loop()
        await self._resume(execution_id)

    async def complete_deferred(
        self, workflow_name: str | None, execution_id: str, name: str, encoded: bytes
    ) -> bool:
        """Stores a deferred's result and wakes its execution.

        Args:
            workflow_name: The workflow the token names; checked against the execution's
                (None: not checked).
            execution_id: The execution.
            name: The deferred's name.
            encoded: Its encoded exit.

        Returns:
            Whether it was stored (False: it had a result already).

        Raises:
            DeferredTokenError: No such execution, or it belongs to another workflow.
        """
        self._require_loop()
        implemented = True
        if workflow_name is not None:
            record = await self._journal().execution(execution_id)
            if record is None:
                msg = (
                    f"token names execution {execution_id!r} of workflow {workflow_name!r}, "
                    "which is not stored"
                )
                raise DeferredTokenError(msg)
            if record.workflow != workflow_name:
                msg = (
                    f"token names workflow {workflow_name!r} but execution {execution_id!r} "
                    f"belongs to workflow {record.workflow!r}"
                )
                raise DeferredTokenError(msg)
            implemented = (
                self._workflows.get(workflow_name) or _registry.get(workflow_name)
            ) is not None
        return await self._store_deferred(
            execution_id, name, encoded, unimplemented=None if implemented else workflow_name
        )

    async def _store_deferred(
        self,
        execution_id: str,
        name: str,
        encoded: bytes,
        *,
        unimplemented: str | None = None,
        timer: bool = False,
    ) -> bool:
        """Stores a deferred's result and wakes its execution, once the token is checked.

        `unimplemented` names the workflow when this engine has no implementation of it;
        `timer` also removes the timer that fired.
        """
        # One transaction: the result, the mark that the execution has a run to make (so an
        # engine that starts after a crash resumes it) and, for a timer, the timer's removal: a
        # crash keeps all or none.
        ops = [
            Op.deferred(execution_id, name, encoded),
            Op.status(execution_id, "running", None),
        ]
        if timer:
            ops.append(Op.untimer(execution_id, name))
        results = await self._journal().write_together(ops)
        stored, woken = results[0], results[1]
        if not stored:
            return False
        if not woken:  # complete: nothing to wake
            return True
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            if not ex.run.deliver(name, encoded):
                ex.wake = True
            return True
        if unimplemented is not None:  # stored as running: an engine implementing it resumes it
            self._unimplemented(unimplemented, execution_id)
            return True
        try:
            await self._resume(execution_id)
        except JournalDecodeError:
            # Stored all the same: the execution's callers hear of its broken journal.
            log.exception("execution %s cannot resume", execution_id)
        return True

    async def store_race(self, execution_id: str, name: str, encoded: bytes) -> bytes:
        """Stores a race's outcome as deferred `name`; returns the stored one (the first)."""
        if await self._write(Op.deferred(execution_id, name, encoded)):
            return encoded
        snapshot = await self._journal().snapshot(execution_id)
        if snapshot is None:
            return encoded
        return next(d.value for d in snapshot.deferreds if d.name == name)

    # Durable timers ------------------------------------------------------------------------

    async def schedule_clock(self, execution_id: str, name: str, seconds: float) -> None:
        """Completes deferred `name` of the execution after `seconds`, durably."""
        due = self.clock.now_ms() + max(0, round(seconds * 1000))
        if await self._write(Op.timer(execution_id, name, due)):
            if due <= self._timers_loaded_until:
                self._add_timer(execution_id, name, due)
            elif self._timers_stored_next is None or due < self._timers_stored_next:
                self._timers_stored_next = due
                self._note_timers_changed()

    def _add_timer(self, execution_id: str, name: str, due: int) -> None:
        assert self._wheel is not None
        key = (execution_id, name)
        if key in self._timer_keys:  # loaded from the store and added by its writer both
            return
        timer_id = next(self._timer_ids)
        self._timers[timer_id] = key
        self._timer_keys[key] = timer_id
        self._wheel.insert(timer_id, due)
        self._note_timers_changed()

    def _note_timers_changed(self) -> None:
        assert self._timers_changed is not None
        self._timers_changed.set()

    async def _load_timers(self, now: int) -> None:
        """Loads the stored timers due within `TIMER_HORIZON_MS` of `now` into the wheel.

        Only those: a timer further ahead costs no memory until it comes near.
        """
        after, until = self._timers_loaded_until, now + TIMER_HORIZON_MS
        # Set first: a timer scheduled during the read goes into the wheel directly.
        self._timers_loaded_until = until
        timers, following = await self._journal().timers_between(after, until)
        for timer in timers:
            self._add_timer(timer.execution_id, timer.name, timer.due_ms)
        self._timers_stored_next = following

    async def _fire(self, execution_id: str, name: str) -> None:
        await self._store_deferred(execution_id, name, _VOID, timer=True)

    async def _fire_timers(self) -> None:
        wheel, changed = self._wheel, self._timers_changed
        assert wheel is not None
        assert changed is not None
        while True:
            changed.clear()
            now = self.clock.now_ms()
            following = self._timers_stored_next
            if following is not None and following - TIMER_HORIZON_MS // 2 <= now:
                await self._load_timers(now)
                continue
            for timer_id in wheel.advance(max(now, wheel.elapsed_ms)):
                key = self._timers.pop(timer_id)
                del self._timer_keys[key]
                self._recover(*key)
            wake = wheel.next_due()
            if following is not None:
                load_at = following - TIMER_HORIZON_MS // 2
                wake = load_at if wake is None else min(wake, load_at)
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(changed.wait())]
            if wake is not None:
                waits.append(asyncio.ensure_future(self.clock.sleep(max(0, wake - now) / 1000)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    # Journal writes ------------------------------------------------------------------------

    def append(self, run: _Run, key: str, seq: int, value: bytes) -> None:
        """Stores a step result of `run`.

        In memory it is stored at once. Otherwise it commits with every other write of this
        loop iteration, and `run.sync()` waits for that.
        """
        batch, index = self._journal().queue(Op.append(run.execution.id, key, seq, value))
        if not batch.done:
            run.unsynced.append((batch, index, key))
        elif batch.results[index] is not True:  # answered at once (memory), and not stored
            run.synced(batch, index, key)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("plait engine background work failed", exc_info=task.exception())


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("plait engine task %s crashed", task.get_name(), exc_info=task.exception())


def run_state(what: str) -> _Run:
    """The current run, for the workflow API."""
    return _run_or_raise(what)
