"""The engine: starts, joins and finishes executions, and drives their runs.

The `Engine` owns what lives across runs: the executions it holds in memory, their waiters,
the store, the durable timers and recovery. Each run's replay is `plait.engine.run.Run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn, cast

import plait.engine.registry as registry
from plait import _bridge
from plait._native import (
    Ended,
    Fenced,
    Op,
    Resume,
    Store,
    WorkSource,
    parse_deferred_token,
    shard_id,
)
from plait._native import Execution as ExecutionRecord
from plait.clocks import Clock, SystemClock, milliseconds_ceil, seconds
from plait.engine.listing import (
    DEFAULT_COUNT_CAP,
    ExecutionPage,
    ExecutionStatusName,
    ExecutionTimeline,
    count_executions,
    count_suspended,
    list_executions,
    timeline_of,
)
from plait.engine.run import (
    Execution,
    Run,
    current_activity,
    current_attempt,
    current_race,
    current_run,
)
from plait.engine.scope import close_scope
from plait.engine.signals import ShardMoved, StoredFirst, engine_cancelled, log, unexpected
from plait.engine.specs import EntityHost, WorkflowSpec
from plait.engine.work import WorkLoop
from plait.errors import (
    Defect,
    DeferredTokenError,
    EngineClosedError,
    EngineFencedError,
    Interrupted,
    JournalDecodeError,
    NoEngineError,
    SuspendedRetryExhaustedError,
    UnknownExecutionError,
    WorkflowNotImplementedError,
)
from plait.exits import Complete, Exit, ExitCodec, Failure, Success, Suspended, defect_of
from plait.journal import Journal, Snapshot
from plait.observability import tracing
from plait.observability.logs import fields
from plait.observability.metrics import EngineGauges, metrics

__all__ = ["Engine", "current_engine", "engine_for"]

#: A deferred completed with no value (Effect's `Exit.void`), as a child's end in its parent.
_VOID = b'{"_tag":"Success","value":null}'


#: The engine of the enclosing `async with engine:`.
current_engine: contextvars.ContextVar[Engine | None] = contextvars.ContextVar(
    "plait.engine", default=None
)


def engine_for(engine: Engine | None) -> Engine:
    """`engine`, else the engine of the current run, else the one of `async with engine:`."""
    if engine is not None:
        return engine
    run = current_run.get()
    if run is not None:
        return cast("Engine", run.engine)
    found = current_engine.get()
    if found is None:
        msg = "no engine: pass engine=, or call inside `async with engine:`"
        raise NoEngineError(msg)
    return found


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
        sharding: object | None = None,
        cluster: bool = False,
    ) -> None:
        self._open: Callable[[], Awaitable[Store]] | None = None
        #: Whether this engine is a runner of a cluster (see `plait.Runner`): it serves the
        #: entities and runs the executions of the shards it holds.
        self.cluster = cluster
        self._shards_per_group = 300
        #: Shards moving away from this runner (`stop_runs`): their runs start no activity.
        self.leaving: set[str] = set()
        # On a runner, the steps and deferreds the last runs here knew, by execution (the
        # latest 10,000): a snapshot read before such a run ended is stale (see `_resume_from`).
        self._recent_ends: dict[str, tuple[int, int]] = {}
        self.store: Store | None
        self.journal: Journal | None
        if isinstance(store, Store):
            self.store, self.journal = store, Journal(store)
        else:
            self.store, self.journal, self._open = None, None, store
        self.clock: Clock = clock if clock is not None else SystemClock()
        #: The cluster's configuration (a `plait.ShardingConfig`), for the entities it runs;
        #: None: the defaults, read from `PLAIT_*` environment variables.
        self.sharding = sharding
        self._live: dict[str, Execution] = {}
        self._resuming: set[str] = set()
        self._rewake: set[str] = set()
        # Executions interrupted with `interrupt_unsafe`: their runs start nothing new.
        self._interrupt_now: set[str] = set()
        self._workflows: dict[str, WorkflowSpec] = {}
        self._unimplemented_seen: set[str] = set()
        # Runs started per execution not complete yet, while tracing (`plait.attempt`).
        self._run_counts: dict[str, int] = {}
        # Due times of the timers this process scheduled, for the timer lag metric.
        self._timers_due: dict[tuple[str, str], int] = {}
        # What the metrics read from this engine at scrape time, while it runs with them on.
        self._gauges: EngineGauges | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._context_token: contextvars.Token[Engine | None] | None = None
        self._base_context: contextvars.Context | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # The work source (recovery, durable timers) and the tasks that take its work.
        self._work: WorkLoop | None = None
        self._work_tasks: list[asyncio.Task[None]] = []
        #: What runs this engine's entities (set by `plait.cluster` when the engine starts).
        self.entity_host: EntityHost | None = None
        self._lease_task: asyncio.Task[None] | None = None
        # Why the engine stopped on its own: another engine took the database over.
        self._fenced: EngineFencedError | None = None
        # The wake-ups of this process's durable queue workers, by queue: an offer made here
        # wakes them at once (others poll the store).
        self._queue_wakes: dict[str, set[Callable[[], None]]] = {}

    @classmethod
    def memory(cls, *, clock: Clock | None = None, sharding: object | None = None) -> Engine:
        """An engine whose journal lives in this process (in Rust); nothing survives it."""
        return cls(Store.memory(), clock=clock, sharding=sharding)

    @classmethod
    def sqlite(
        cls,
        path: str | os.PathLike[str] = "plait.db",
        *,
        prefix: str = "plait_",
        durability: Literal["full", "normal"] = "full",
        clock: Clock | None = None,
        sharding: object | None = None,
    ) -> Engine:
        """An engine on a SQLite file (created if missing): no server, survives `kill -9`.

        Args:
            path: The database file.
            prefix: Prefix of plait's table names.
            durability: `"full"` (default): a step is on disk before its workflow goes on, so
                it survives a crash or a power cut (WAL, `synchronous=FULL`). `"normal"`:
                faster, may lose the last commits on a power cut (never corrupts).
            clock: The time source (default: the system clock).
            sharding: The cluster's configuration (`plait.ShardingConfig`) for the entities
                this engine runs (default: Effect's defaults, and `PLAIT_*` variables).
        """
        url = f"sqlite://{os.fspath(path)}"
        return cls.url(url, prefix=prefix, durability=durability, clock=clock, sharding=sharding)

    @classmethod
    def postgres(
        cls,
        url: str,
        *,
        prefix: str = "plait_",
        durability: Literal["full", "normal"] = "full",
        lease_ttl: timedelta | float | None = None,
        clock: Clock | None = None,
        sharding: object | None = None,
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
            sharding: The cluster's configuration (`plait.ShardingConfig`) for the entities
                this engine runs (default: Effect's defaults, and `PLAIT_*` variables).
        """
        return cls.url(
            url,
            prefix=prefix,
            durability=durability,
            lease_ttl=lease_ttl,
            clock=clock,
            sharding=sharding,
        )

    @classmethod
    def url(
        cls,
        url: str,
        *,
        prefix: str = "plait_",
        durability: str = "full",
        lease_ttl: timedelta | float | None = None,
        clock: Clock | None = None,
        sharding: object | None = None,
        cluster: bool = False,
    ) -> Engine:
        """An engine on the database at `url` (`sqlite://...` or `postgres://...`).

        With `cluster`, a runner of a cluster (see `plait.Runner`): on PostgreSQL many
        runners share the database.
        """
        lease_ttl_ms = None if lease_ttl is None else milliseconds_ceil(seconds(lease_ttl))

        async def open_store() -> Store:
            store: Store = await _bridge.call(
                lambda bridge: Store.open(bridge, url, prefix, durability, lease_ttl_ms, cluster)
            )
            return store

        return cls(open_store, clock=clock, sharding=sharding, cluster=cluster)

    # Lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        self._context_token = current_engine.set(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._context_token is not None:
            current_engine.reset(self._context_token)
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
        for var in (current_run, current_race, current_activity):
            ctx.run(var.set, None)
        ctx.run(current_attempt.set, 1)
        self._base_context = ctx
        assert self.store is not None
        if self.cluster:
            # A `plait.ShardingConfig` (the cluster's layer sets it), or its defaults.
            per_group = getattr(self.sharding, "shards_per_group", 300)
            self._shards_per_group = per_group
            reply_poll = getattr(self.sharding, "entity_reply_poll_interval", None)
            reply_poll_ms = 200 if reply_poll is None else milliseconds_ceil(seconds(reply_poll))
            scan = getattr(self.sharding, "entity_message_poll_interval", None)
            scan_ms = 10_000 if scan is None else milliseconds_ceil(seconds(scan))
            self._work = WorkLoop(
                self.store,
                self.clock,
                self._take_work,
                shards_per_group=per_group,
                reply_poll_ms=reply_poll_ms,
                scan_ms=scan_ms,
            )
        else:
            self._work = WorkLoop(self.store, self.clock, self._take_work)
        for hook in registry.start_hooks():
            hook(self)
        await self._work.started()
        for work in self._work.tasks():
            task = self._loop.create_task(work, context=ctx)
            task.add_done_callback(_log_crash)
            self._work_tasks.append(task)
        if self.store is not None and not journal.immediate:
            self._lease_task = self._loop.create_task(self._watch_lease(self.store), context=ctx)
            self._lease_task.add_done_callback(_log_crash)
        if (counters := metrics()) is not None:
            self._gauges = EngineGauges(
                loop,
                self._work.source.mailbox_depths,
                functools.partial(count_suspended, journal),
            )
            counters.watch(self._gauges)

    async def close(self) -> None:
        """Stops every run and interrupts waiting callers with `EngineClosedError`.

        The executions stay stored; a durable engine started later resumes them. After the
        engine lost the database to another one, callers get `EngineFencedError` instead.
        """
        if self._loop is None:
            return
        if self._gauges is not None and (counters := metrics()) is not None:
            counters.unwatch(self._gauges)
            self._gauges = None
        if self.entity_host is not None and self._fenced is None and not self._closing:
            # Entity handlers get their termination timeout to finish (and store their
            # replies); workflows stop at once, their journal resumes them.
            await self.entity_host.drain()
        self._closing = True
        tasks = [ex.run.task for ex in self._live.values() if ex.run and ex.run.task]
        tasks += self._background
        for task in (*self._work_tasks, self._lease_task):
            if task is not None and task is not asyncio.current_task():
                tasks.append(task)
        if self._work is not None:
            self._work.close()
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
        if self.entity_host is not None:
            host, self.entity_host = self.entity_host, None
            host.close(self._fenced or EngineClosedError("", "the engine closed"))
        self._live.clear()
        self._interrupt_now.clear()
        self._loop = None
        self._work, self._work_tasks = None, []
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

    def require_loop(self) -> asyncio.AbstractEventLoop:
        """The engine's event loop.

        Raises:
            NoEngineError: The engine is not started.
            EngineFencedError: It stopped because another engine took its database over.
        """
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
        task = self.require_loop().create_task(work, context=self._base_context.copy())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _write(self, op: Op) -> Awaitable[Any]:
        return self._journal().write(op)

    # Where executions run (a runner of a cluster) ---------------------------------------------

    def _owns(self, execution_id: str) -> bool:
        """Whether this process runs the execution.

        A single engine runs every one; a runner of a cluster those of the shards whose lease
        it holds (an execution is Effect's entity `Workflow/<name>` keyed by its id, in the
        shard of the id).
        """
        if not self.cluster or self._work is None:
            return True
        return self._work.source.owns(execution_id)

    def _shard_of(self, execution_id: str) -> str | None:
        """The shard the execution's journal is written as the owner of (None: single engine)."""
        if not self.cluster:
            return None
        return f"default:{shard_id(execution_id, self._shards_per_group)}"

    def _execution(
        self, execution_id: str, workflow: WorkflowSpec, payload: Any, parent: str | None
    ) -> Execution:
        ex = Execution(execution_id, workflow, payload, parent)
        ex.shard = self._shard_of(execution_id)
        return ex

    def _follow_remote(self, ex: Execution) -> None:
        """Waits for the end of a run of `ex` on the runner that owns it (`_ended` gets it)."""
        if self._work is not None:
            self._work.source.await_executions([ex.id], suspended=bool(ex.run_waiters))

    async def _wake(self, execution_id: str) -> None:
        """Has the runner that owns the execution run it.

        The running mark's commit wakes it (or, missed, its periodic look finds it).
        """
        await self._write(Op.status(execution_id, "running", None))

    async def stop_runs(self, shards: set[str], grace: float = 0.0) -> None:
        """Stops the runs of executions of shards moving away, before their leases go.

        Runs start no new activity from now on; for up to `grace` seconds those in an
        activity finish it (its result commits under the lease, so the new owner does not run
        it again), or suspend. The rest are stopped without recording anything. The new owner
        resumes them all from their journals; callers here wait for its results.
        """
        self.leaving |= shards
        live = [ex.id for ex in self._live.values() if ex.shard in shards and ex.run is not None]
        try:

            def running() -> list[asyncio.Task[None]]:
                return [
                    ex.run.task
                    for ex in self._live.values()
                    if ex.shard in shards
                    and ex.run is not None
                    and ex.run.task is not None
                    and not ex.run.task.done()
                ]

            if grace > 0 and (tasks := running()):
                await asyncio.wait(tasks, timeout=grace)
            stopped = []
            for ex in [ex for ex in self._live.values() if ex.shard in shards]:
                run = ex.run
                if run is not None and run.task is not None and not run.task.done():
                    run.fatal = run.fatal or ShardMoved(ex.id)
                    run.task.cancel()
                    stopped.append(run.task)
            if stopped:
                await asyncio.gather(*stopped, return_exceptions=True)
            for ex in [ex for ex in self._live.values() if ex.shard in shards]:
                if ex.run is None or ex.run.task is None or ex.run.task.done():
                    self._moved(ex)
            # A run that suspended meanwhile may have overwritten the running mark of another
            # process's wake-up (a deferred it completed), whose notification this runner no
            # longer took: marked running again, the new owner's listing runs them once more.
            if live:
                await asyncio.gather(*(self._wake(execution_id) for execution_id in live))
        finally:
            self.leaving -= shards

    def _refused(self, execution_id: str) -> NoReturn:
        """A write of the execution's run was refused (its shard moved): the run stops."""
        error = ShardMoved(execution_id)
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            ex.run.fail(error)
        raise error

    def _moved(self, ex: Execution) -> None:
        """`ex` runs elsewhere now: its callers here wait for its owner's result."""
        ex.run = None
        ex.wake = False
        # The new owner's replay registers them again there.
        ex.finalizers.clear()
        ex.compensated.clear()
        self._interrupt_now.discard(ex.id)
        if ex.waiters or ex.run_waiters:
            self._follow_remote(ex)
        else:
            self._live.pop(ex.id, None)

    def _ended(self, work: Ended) -> None:
        """A run of an execution awaited from another runner ended: its callers here hear."""
        ex = self._live.get(work.execution_id)
        if ex is None or ex.run is not None:
            return  # nobody waits, or it runs here now (its run answers them)
        try:
            result = self._result_of(work.execution, ex.workflow)
        except JournalDecodeError as err:
            self._fail_waiters(ex.id, err)
            result = None
        if result is not None:
            for waiter in ex.run_waiters:
                if not waiter.done():
                    waiter.set_result(result)
            ex.run_waiters.clear()
            if isinstance(result, Complete):
                for final in ex.waiters:
                    if not final.done():
                        final.set_result(result)
                ex.waiters.clear()
        if ex.waiters:
            self._follow_remote(ex)
        elif not ex.run_waiters and not ex.finalizers:
            self._live.pop(ex.id, None)

    # Executions ----------------------------------------------------------------------------

    def _workflow(self, name: str) -> WorkflowSpec:
        workflow = self._workflows.get(name) or registry.lookup(name)
        if workflow is None or workflow.handler is None:
            msg = f"workflow {name!r} has no implementation registered"
            raise WorkflowNotImplementedError(msg)
        return workflow

    async def execute(
        self,
        workflow: WorkflowSpec,
        payload: Any,
        *,
        discard: bool = False,
        execution_id: str | None = None,
    ) -> Any:
        """Starts or joins the execution of `workflow` for `payload` (a validated model).

        Waits for its result unless `discard`. `execution_id` replaces the id computed from
        the payload.
        """
        self.require_loop()
        if execution_id is None:
            execution_id = workflow.execution_id(payload)
        # On a cluster, only the runner that owns the execution needs its implementation.
        if workflow.handler is None and self._owns(execution_id):
            msg = (
                f"workflow {workflow.name!r} has no implementation: "
                f"register one with @{workflow.name}.implement"
            )
            raise WorkflowNotImplementedError(msg)
        if workflow.handler is not None:
            self._workflows[workflow.name] = workflow
        parent = current_run.get()
        if parent is not None and parent.engine is not self:
            parent = None
        if parent is not None and parent.interrupting:
            await parent.stop_here()
        if parent is not None and parent.unsynced:
            await parent.sync()
        await self._attach(workflow, execution_id, payload, parent)
        if discard:
            return execution_id
        if parent is not None:
            return await self._await_child(parent, execution_id)
        if workflow.suspended_retry is None and not self._owns(execution_id):
            return (await self._await_remote(execution_id, workflow)).exit.unwrap()
        if workflow.suspended_retry is None:
            ex = self._live.get(execution_id)
            if ex is not None and ex.run is not None:  # running: wait for its completion
                waiter: asyncio.Future[Complete[Any]] = self.require_loop().create_future()
                ex.waiters.append(waiter)
                return (await waiter).exit.unwrap()
        result = await self._await_complete(execution_id, workflow)
        return result.exit.unwrap()

    async def _attach(
        self, workflow: WorkflowSpec, execution_id: str, payload: Any, parent: Run | None
    ) -> None:
        if parent is not None:
            parent.execution.children.add(execution_id)
        if execution_id in self._live:
            return
        parent_id = parent.execution.id if parent is not None else None
        # Held from now, so concurrent callers of the same id join this execution. No payload
        # until the start creates the execution: if it exists, its stored payload is the one a
        # run uses (decoded by `_resume`, maybe a concurrent one, such as recovery's).
        ex = self._execution(execution_id, workflow, None, parent_id)
        self._live[execution_id] = ex
        encoded = workflow.encode_payload(payload)
        start = None
        if tracing.tracer() is not None:
            # The start's span is the parent of every run, here and, through the traceparent
            # stored with the payload, in any process that resumes the execution later.
            start = tracing.start_span(
                "plait.workflow.start",
                {"plait.workflow": workflow.name, "plait.execution_id": execution_id},
                kind="producer",
            )
            assert start is not None
            ex.trace = tracing.context_with(start)
            encoded = tracing.with_trace(encoded, tracing.traceparent_of(ex.trace))
        # Started as the owner of its shard when this runner holds it (it runs here, and
        # wakes nobody); otherwise the start's commit wakes the runner that holds it.
        owned = self._owns(execution_id)
        try:
            shard = ex.shard if owned else None
            existing = await self._write(
                Op.start(execution_id, workflow.name, encoded, parent_id, shard)
            )
            if isinstance(existing, Fenced):  # the shard moved meanwhile
                owned = False
                existing = await self._write(
                    Op.start(execution_id, workflow.name, encoded, parent_id)
                )
        finally:
            if start is not None:
                start.end()
        if existing is None:
            if (counters := metrics()) is not None:
                counters.of(counters.executions_started, workflow.name).inc()
            ex.payload = payload
            if owned and self._owns(execution_id):  # its shard may have moved meanwhile
                self._launch(ex, None)
            elif owned:
                self._moved(ex)
                await self._wake(execution_id)
            elif not ex.waiters and not ex.run_waiters:
                self._live.pop(execution_id, None)
            return
        if not owned:
            # Running, suspended or complete: its owner's business; callers wait on the store.
            if not ex.waiters and not ex.run_waiters:
                self._live.pop(execution_id, None)
        elif existing.status == "running":
            await self._resume(execution_id)
        elif existing.status == "complete" and not ex.waiters:
            self._live.pop(execution_id, None)

    def _launch(self, ex: Execution, snapshot: Snapshot | None) -> None:
        loop = self.require_loop()
        assert self._base_context is not None
        run = Run(self, ex)
        run.interrupting = ex.id in self._interrupt_now
        if snapshot is not None:
            run.load(snapshot)
        ex.run = run
        ex.wake = False
        ex.resumed = snapshot is not None
        if tracing.tracer() is not None:
            # Counted across the runs of this engine: the `Execution` goes between them.
            ex.runs = self._run_counts[ex.id] = self._run_counts.get(ex.id, 0) + 1
        ctx = self._base_context.copy()
        ctx.run(current_run.set, run)
        run.task = loop.create_task(self._drive(run), context=ctx)

    async def _resume(self, execution_id: str, snapshot: Snapshot | None = None) -> bool:
        """Starts a new run of a stored execution that is not running here.

        Reads its snapshot unless given one. Returns whether it started a run (not when the
        execution is running already, complete, or unknown).
        """
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            ex.wake = True
            return False
        if not self._owns(execution_id):
            await self._wake(execution_id)
            return False
        if execution_id in self._resuming:
            self._rewake.add(execution_id)
            return False
        self._resuming.add(execution_id)
        try:
            if snapshot is None:
                snapshot = await self._journal().snapshot(execution_id)
            ex = self._prepare(execution_id, snapshot)
            if ex is None or snapshot is None:
                return False
            if snapshot.execution.status != "running":
                marked = await self._write(Op.status(execution_id, "running", None, ex.shard))
                if isinstance(marked, Fenced):
                    self._moved(ex)
                    await self._wake(execution_id)
                    return False
            if ex.run is not None:  # started while we read
                return False
            if not self._owns(execution_id):  # its shard moved while we read
                self._moved(ex)
                return False
            self._launch(ex, snapshot)
        finally:
            self._resuming.discard(execution_id)
        if execution_id in self._rewake:
            self._rewake.discard(execution_id)
            ex.wake = True
        return True

    def _prepare(self, execution_id: str, snapshot: Snapshot | None) -> Execution | None:
        """The execution to run from `snapshot`, held in `_live`; None if there is nothing to run.

        Nothing to run: the execution is unknown or complete, or this engine does not implement
        its workflow (an engine that does will run it).

        Raises:
            JournalDecodeError: Its stored payload no longer decodes (its callers hear so too).
        """
        if snapshot is None:
            return None
        record = snapshot.execution
        if record.status == "complete":
            return None
        ex = self._live.get(execution_id)
        if ex is None or ex.payload is None:
            name = record.workflow
            if ex is not None:
                workflow = ex.workflow
            elif (found := self._workflows.get(name) or registry.lookup(name)) is not None:
                workflow = found
            else:
                self._unimplemented(name, execution_id)
                return None
            stored, traceparent = tracing.split_trace(record.payload)
            try:
                payload = workflow.decode_payload(stored)
            except JournalDecodeError as err:
                self._fail_waiters(
                    execution_id, JournalDecodeError(f"execution {execution_id}: {err}")
                )
                raise
            if ex is None:
                ex = self._execution(execution_id, workflow, payload, record.parent)
                self._live[execution_id] = ex
            ex.payload = payload
            ex.parent = ex.parent or record.parent
            if ex.trace is None and traceparent is not None:
                ex.trace = tracing.context_of(traceparent)
        ex.interrupted = ex.interrupted or record.interrupted
        return ex

    @property
    def running(self) -> bool:
        """Whether the engine is started and not closing."""
        return self._loop is not None and not self._closing

    @property
    def work_source(self) -> WorkSource:
        """The engine's work source (for what runs on the engine beside workflows: entities).

        Raises:
            NoEngineError: The engine is not started.
        """
        if self._work is None:
            msg = "the engine is not started: use `async with engine:`"
            raise NoEngineError(msg)
        return self._work.source

    def work_changed(self) -> None:
        """Tells the work loop that the source's next wake-up may have moved.

        Entities became resident or idle; a clock the loop moves looks at `next_due` again.
        """
        if self._work is not None:
            self._work.changed()

    def _take_work(self, batch: list[Any]) -> None:
        """Hands each unit of the work source's work to what runs it."""
        entity_work: list[Any] = []
        for work in batch:
            if isinstance(work, Resume):
                self._resume_from(work)
            elif isinstance(work, Ended):
                self._ended(work)
            else:
                entity_work.append(work)
        if entity_work:
            if self.entity_host is None:
                log.error("entity work came with nothing to run it: %s", entity_work[:3])
                return
            self.entity_host.take(entity_work)

    def _resume_from(self, work: Resume) -> None:
        """Runs what the work source hands over: an execution recovered, or woken by a timer.

        The source read its snapshot after the event, so a run starts at once, with no read.
        A run of it already live here takes the fired deferred instead (or runs again after).
        """
        execution_id, snapshot = work.execution_id, work.snapshot
        if work.fired is not None and self._timers_due:
            due = self._timers_due.pop((execution_id, work.fired), None)
            counters = metrics()
            if due is not None and counters is not None:
                counters.timer_lag.observe(max(0, self.clock.now_ms() - due) / 1000)
        ex = self._live.get(execution_id)
        if ex is not None and ex.run is not None:
            if work.recovered:
                return  # found running by a listing: it is, here
            fired = work.fired
            if fired is None:
                # Woken by another process: what it stored (a deferred, an interrupt) goes to
                # the run; anything else (a child's end) needs a new run after this one.
                run = ex.run
                taken = False
                for deferred in snapshot.deferreds:
                    if deferred.name not in run.deferreds:
                        taken = run.deliver(deferred.name, deferred.value) or taken
                if snapshot.execution.interrupted and not ex.interrupted:
                    ex.interrupted = True
                    taken = False
                if not taken:
                    ex.wake = True
                return
            value = next((d.value for d in snapshot.deferreds if d.name == fired), None)
            if value is None or not ex.run.deliver(fired, value):
                ex.wake = True
            return
        known = self._recent_ends.get(execution_id) if self.cluster else None
        if known is not None and (
            len(snapshot.entries) < known[0] or len(snapshot.deferreds) < known[1]
        ):
            # Read before a run here ended (woken by another process meanwhile): read again.
            self._spawn(self._resume(execution_id))
            return
        if execution_id in self._resuming or snapshot.execution.status != "running":
            self._spawn(self._resume(execution_id, snapshot))
            return
        try:
            prepared = self._prepare(execution_id, snapshot)
        except JournalDecodeError:
            log.exception(
                "execution %s cannot resume", execution_id, extra=fields(execution_id=execution_id)
            )
            return
        if prepared is not None and prepared.run is None:
            if self._owns(execution_id):
                self._launch(prepared, snapshot)
            else:  # its shard moved since it was read: the new owner lists it
                self._moved(prepared)

    def _unimplemented(self, workflow_name: str, execution_id: str) -> None:
        """Notes once per workflow that its executions wait for an engine implementing it."""
        if workflow_name not in self._unimplemented_seen:
            self._unimplemented_seen.add(workflow_name)
            log.warning(
                "executions of workflow %r (such as %s) wait for an engine that implements it",
                workflow_name,
                execution_id,
                extra=fields(execution_id=execution_id, workflow=workflow_name),
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

    async def _drive(self, run: Run) -> None:
        span = None
        if tracing.tracer() is not None:
            ex = run.execution
            span = tracing.start_span(
                "plait.workflow.run",
                {
                    "plait.workflow": ex.workflow.name,
                    "plait.execution_id": ex.id,
                    "plait.attempt": ex.runs,
                    "plait.resumed": ex.resumed,
                },
                parent=ex.trace,
            )
            assert span is not None
            # This task's own context: every span of the run (activities, waits) is a child,
            # and a run that is not sampled stays current so what it calls is not sampled
            # either, while its steps skip their spans.
            tracing.activate(span)
            run.traced = tracing.sampled(span)
        counters = metrics()
        if counters is not None:
            counters.runs_active.inc()
        result: Complete[Any] | Suspended | BaseException | None = None
        try:
            result = await self._drive_body(run)
        finally:
            if counters is not None:
                counters.runs_active.dec()
                _count_result(counters, run.execution.workflow.name, result)
            if span is not None:
                _end_run_span(span, result)
            if log.isEnabledFor(logging.DEBUG):
                ex = run.execution
                log.debug(
                    "run %d of execution %s ended: %s",
                    ex.runs,
                    ex.id,
                    _outcome(result),
                    extra=fields(execution_id=ex.id, workflow=ex.workflow.name, attempt=ex.runs),
                )

    async def _drive_body(self, run: Run) -> Complete[Any] | Suspended | BaseException:
        ex = run.execution
        workflow = ex.workflow
        handler = workflow.handler
        assert handler is not None
        outcome: Exit | None = None
        try:
            value = await handler(ex.payload, ex.id)
            run.body_done = True
            outcome = Success(value)
        except Exception as exc:
            run.body_done = True
            outcome = Failure(exc)
        except BaseException as exc:
            run.body_done = True
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if engine_cancelled(exc):
                # Cancelled to suspend: the run ends `Suspended`; by an unsafe interrupt: it
                # ends `Interrupted`. Cancelled otherwise (the engine or its loop closing):
                # nothing is recorded, the stored execution stays running for a later engine.
                if not (run.suspended or run.interrupting) or self._closing or run.fatal:
                    raise
                task = asyncio.current_task()
                while task is not None and task.cancelling():
                    task.uncancel()  # finalizers run next, uncancelled
                if run.interrupting:
                    outcome = Failure(Interrupted(ex.id))
            else:
                # Raised by the body itself (a group mixing a failure and a cancellation, a
                # CancelledError of its own, a BaseException subclass): a defect like any
                # other. Letting it end the task left the execution without an outcome.
                outcome = unexpected(f"workflow {workflow.name!r}, execution {ex.id}", exc)
        result: Complete[Any] | Suspended | BaseException = self._into_result(run, outcome)
        if isinstance(result, Complete) and ex.finalizers and run.unsynced:
            # Finalizers and compensations act on the world: the steps they answer to first.
            try:
                await run.sync()
            except Exception as err:
                result = err
        if isinstance(result, Complete):
            result, encoded = await close_scope(run, result)
            await self._finish(run, result, encoded)
        else:
            await self._finish(run, result, None)
        return result

    def _into_result(
        self, run: Run, outcome: Exit | None
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

    async def _finish(
        self, run: Run, result: Complete[Any] | Suspended | BaseException, encoded: bytes | None
    ) -> None:
        ex = run.execution
        if isinstance(run.fatal, ShardMoved):
            result = run.fatal  # even if a finalizer's step swallowed it: nothing is recorded
        if isinstance(result, ShardMoved):
            self._moved(ex)  # nothing of this run is recorded; its shard's new owner runs it
            run.task = None
            return
        # The result is durable before anyone hears of it; meanwhile `ex.run` stays set, so a
        # completion arriving now marks the execution for a new run instead of starting one.
        if isinstance(result, Complete):
            assert encoded is not None
            stored = await self._write(Op.status(ex.id, "complete", encoded, ex.shard))
            if isinstance(stored, Fenced):
                self._moved(ex)
                run.task = None
                return
            if not stored:
                result = await self._result_stored_first(ex, result)
            self._interrupt_now.discard(ex.id)
            self._run_counts.pop(ex.id, None)
            ex.finalizers.clear()
            ex.compensated.clear()
        elif isinstance(result, Suspended):
            cause = (
                None
                if result.cause is None
                else ExitCodec("cause", None, None).settle(Failure(result.cause))[0]
            )
            # On a runner, suspended only if no deferred came that this run did not see
            # (another process's wake-up, whose running mark must stay).
            suspend = (
                Op.suspend(ex.id, cause, len(run.deferreds), ex.shard)
                if self.cluster
                else Op.status(ex.id, "suspended", cause)
            )
            stored = await self._write(suspend)
            if isinstance(stored, Fenced):
                self._moved(ex)
                run.task = None
                return
            if not stored:
                result = await self._result_stored_first(ex, result)
                if self.cluster and isinstance(result, Suspended):
                    ex.wake = True  # woken meanwhile: it runs again
            elif self.cluster and not self._owns(ex.id):
                # Suspended as its shard was going: a wake-up this runner no longer takes may
                # have been overwritten; marked running again, the new owner runs it once more.
                await self._wake(ex.id)
        if self.cluster:
            ends = self._recent_ends
            ends.pop(ex.id, None)
            ends[ex.id] = (len(run.journal) + run.appended, len(run.deferreds))
            if len(ends) > 10_000:
                del ends[next(iter(ends))]
        ex.run = None
        run.task = None  # the task holds the run in its context: no cycle left behind
        if isinstance(result, StoredFirst):
            # Nothing of this run was recorded: a new run replays the stored results.
            log.warning(
                "%s; replaying it",
                result,
                extra=fields(execution_id=ex.id, workflow=ex.workflow.name),
            )
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
                if self.cluster:
                    # A deferred of the parent's, with its running mark: a suspension of the
                    # parent committing at the same moment (on another runner) counts it and
                    # is refused, so the wake-up survives even that runner's death.
                    self._spawn(self._store_deferred(ex.parent, f"~plait/child/{ex.id}", _VOID))
                else:
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
        self, ex: Execution, result: Complete[Any] | Suspended
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
                extra=fields(execution_id=ex.id, workflow=ex.workflow.name),
            )
            return stored
        return result

    async def _stored_result(
        self, execution_id: str, workflow: WorkflowSpec
    ) -> Complete[Any] | Suspended | None:
        record = await self._journal().execution(execution_id)
        if record is None:
            return None
        return self._result_of(record, workflow)

    @staticmethod
    def _result_of(
        record: ExecutionRecord, workflow: WorkflowSpec
    ) -> Complete[Any] | Suspended | None:
        """Where a stored execution stands: its result, suspended, or None (running)."""
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

    async def _await_complete(self, execution_id: str, workflow: WorkflowSpec) -> Complete[Any]:
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
                    payload = workflow.decode_payload(tracing.split_trace(record.payload)[0])
                    ex = self._execution(execution_id, workflow, payload, record.parent)
                    self._live[execution_id] = ex
            loop = self.require_loop()
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
            if not self._owns(execution_id):
                self._follow_remote(ex)
            sleep = asyncio.ensure_future(self.clock.sleep(delay))
            try:
                await asyncio.wait((waiter, sleep), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
            if waiter.done():
                return waiter.result()
            ex.waiters.remove(waiter)
            await self._resume(execution_id)

    async def _await_remote(self, execution_id: str, workflow: WorkflowSpec) -> Complete[Any]:
        """The result of an execution another runner runs.

        Its owner's commit tells (or the regular poll reads it): no read here.
        """
        ex = self._live.get(execution_id)
        if ex is None:
            # Its payload is decoded only if it comes to run here (its shard moves here).
            ex = self._execution(execution_id, workflow, None, None)
            self._live[execution_id] = ex
        waiter: asyncio.Future[Complete[Any]] = self.require_loop().create_future()
        ex.waiters.append(waiter)
        if ex.run is None:
            self._follow_remote(ex)
        try:
            return await waiter
        finally:
            if waiter in ex.waiters:
                ex.waiters.remove(waiter)
            if not ex.waiters and not ex.run_waiters and ex.run is None and self._work:
                self._work.source.forget_executions([execution_id])
                if self._live.get(execution_id) is ex and not ex.finalizers:
                    del self._live[execution_id]

    async def _rejoin(
        self, ex: Execution, workflow: WorkflowSpec, waiter: asyncio.Future[Complete[Any]]
    ) -> None:
        """Makes sure a waiter registered on an execution with no run here gets a result.

        The state read before `waiter` was registered may be stale (a run started and ended
        meanwhile), and an execution stored as running with no run (its last one failed, as
        with a defect it does not capture) needs a new one, or the waiter would wait forever.
        One another runner owns is its business: the waiter hears of its end from there.
        """
        if not self._owns(ex.id):
            self._follow_remote(ex)
            return
        stored = await self._stored_result(ex.id, workflow)
        if isinstance(stored, Complete):
            if not waiter.done():
                waiter.set_result(stored)
                ex.waiters.remove(waiter)
        elif stored is None and ex.run is None:
            # A payload that no longer decodes: `_resume` failed the waiters, `waiter` included.
            with contextlib.suppress(JournalDecodeError):
                await self._resume(ex.id)

    async def _await_child(self, parent: Run, execution_id: str) -> Any:
        ex = self._live.get(execution_id)
        parent.in_flight += 1
        try:
            if ex is not None and ex.run is not None:
                waiter: asyncio.Future[Complete[Any] | Suspended] = (
                    self.require_loop().create_future()
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

    async def _name_of(self, execution_id: str) -> str:
        record = await self._journal().execution(execution_id)
        if record is None:
            raise UnknownExecutionError(f"unknown execution {execution_id!r}")
        return record.workflow

    # Operations on stored executions --------------------------------------------------------

    async def workflow_of(self, execution_id: str) -> str | None:
        """The name of the workflow that execution `execution_id` belongs to.

        `poll` answers None both while an execution runs and when none is stored; this tells
        the two apart, and which workflow an id from outside (a URL, say) really names.

        Returns:
            The workflow's name, or None if no such execution is stored.
        """
        self.require_loop()
        record = await self._journal().execution(execution_id)
        return None if record is None else record.workflow

    async def poll(
        self, workflow: WorkflowSpec, execution_id: str
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
        self.require_loop()
        if not self._owns(execution_id):
            # Its commit wakes the runner that owns it, whose run takes it; marked running
            # too, so that a listing finds it if the notification is lost.
            await self._journal().write_together(
                [Op.interrupt(execution_id), Op.status(execution_id, "running", None)]
            )
            return
        if not await self._write(Op.interrupt(execution_id)):
            return
        ex = self._live.get(execution_id)
        if ex is not None:
            ex.interrupted = True
        await self._resume(execution_id)

    async def interrupt_unsafe(self, execution_id: str) -> None:
        """Interrupts the execution at once (Effect's `WorkflowEngine.interruptUnsafe`).

        Unlike `interrupt`, which lets the current run go on to its end, the running body is
        cancelled now, with the activity it awaits (an async body is cancelled; a sync one runs
        on in its worker thread and its result is dropped). Then its compensations and
        finalizers run, it completes as `Interrupted` and interrupts its children. An execution
        with no run here gets one that replays what its journal holds, registering the
        compensations of the steps done, and starts nothing new. The stored flag is the
        ordinary interrupt's: an engine that recovers the execution after a crash interrupts it
        the ordinary way.
        """
        self.require_loop()
        if not self._owns(execution_id):
            # Another runner's run: interrupted the ordinary way (its commit wakes the owner).
            await self._journal().write_together(
                [Op.interrupt(execution_id), Op.status(execution_id, "running", None)]
            )
            return
        if not await self._write(Op.interrupt(execution_id)):
            return
        self._interrupt_now.add(execution_id)
        ex = self._live.get(execution_id)
        if ex is not None:
            ex.interrupted = True
            if ex.run is not None:
                ex.run.stop_now()
        # A run ending as `Suspended` meanwhile is followed by one that ends interrupted.
        await self._resume(execution_id)

    async def resume(self, execution_id: str) -> None:
        """Starts a new run of a suspended execution (nothing if running or complete)."""
        self.require_loop()
        await self._resume(execution_id)

    async def complete_deferred(
        self,
        workflow_name: str | None,
        execution_id: str,
        name: str,
        encoded: bytes,
        *,
        also: Sequence[Op] = (),
    ) -> bool:
        """Stores a deferred's result and wakes its execution.

        Args:
            workflow_name: The workflow the token names; checked against the execution's
                (None: not checked).
            execution_id: The execution.
            name: The deferred's name.
            encoded: Its encoded exit.
            also: Ops committed in the same transaction as the result (a queue item's done
                mark), whether or not the deferred had a result already.

        Returns:
            Whether it was stored (False: it had a result already).

        Raises:
            DeferredTokenError: No such execution, or it belongs to another workflow.
        """
        self.require_loop()
        implemented = True
        record = None
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
                self._workflows.get(workflow_name) or registry.lookup(workflow_name)
            ) is not None
        span = None
        if tracing.tracer() is not None:
            # A child of the completer's span (a webhook's request), linked to the start of the
            # execution it wakes: the two traces lead to each other.
            stored_trace = None if record is None else tracing.split_trace(record.payload)[1]
            span = tracing.start_span(
                "plait.deferred.complete",
                {"plait.execution_id": execution_id, "plait.deferred": name},
                kind="producer",
                link_to=tracing.context_of(stored_trace),
            )
        outcome = "failed"
        try:
            stored = await self._store_deferred(
                execution_id,
                name,
                encoded,
                unimplemented=None if implemented else workflow_name,
                also=also,
            )
            outcome = "completed" if stored else "already_completed"
            return stored
        finally:
            if span is not None:
                tracing.end_span(span, outcome)

    async def _store_deferred(
        self,
        execution_id: str,
        name: str,
        encoded: bytes,
        *,
        unimplemented: str | None = None,
        also: Sequence[Op] = (),
    ) -> bool:
        """Stores a deferred's result and wakes its execution, once the token is checked.

        `unimplemented` names the workflow when this engine has no implementation of it;
        `also` are ops to commit in the same transaction.
        """
        # One transaction: the result and the mark that the execution has a run to make (so an
        # engine that starts after a crash resumes it): a crash keeps both or neither. (A timer
        # that fires is written the same way, by the work source.)
        # On a runner, written as the owner of the execution's shard if it is this one's (the
        # run here takes it), else as anyone: the commit wakes the runner that owns it.
        owned = self._owns(execution_id)
        # Ops to commit with it (a queue item's done mark) are not the shard's: all are
        # written as anyone's then, so that none commits without the others.
        shard = self._shard_of(execution_id) if owned and not also else None
        ops = [
            Op.deferred(execution_id, name, encoded, shard),
            Op.status(execution_id, "running", None, shard),
            *also,
        ]
        results = await self._journal().write_together(ops)
        if isinstance(results[0], Fenced):  # its shard moved meanwhile
            owned = False
            ops = [
                Op.deferred(execution_id, name, encoded),
                Op.status(execution_id, "running", None),
                *also,
            ]
            results = await self._journal().write_together(ops)
        stored, woken = results[0], results[1]
        if not stored:
            return False
        if not woken or not owned:  # complete: nothing to wake; or another runner's
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
            log.exception(
                "execution %s cannot resume", execution_id, extra=fields(execution_id=execution_id)
            )
        return True

    # Durable queues ------------------------------------------------------------------------

    async def offer(self, queue: str, item_id: str, payload: bytes, token: str | None) -> bool:
        """Stores a durable queue item unless one with its id is stored; wakes the workers.

        Returns:
            Whether it was stored (False: an item with this id was offered before).
        """
        self.require_loop()
        stored = bool(await self._write(Op.offer(queue, item_id, payload, token)))
        if stored:
            for wake in list(self._queue_wakes.get(queue, ())):
                wake()
        return stored

    def queue_wake(self, queue: str, wake: Callable[[], None]) -> None:
        """Calls `wake()` whenever this engine stores an item of `queue`."""
        self._queue_wakes.setdefault(queue, set()).add(wake)

    def queue_unwake(self, queue: str, wake: Callable[[], None]) -> None:
        """Stops calling `wake` for items of `queue`."""
        wakes = self._queue_wakes.get(queue)
        if wakes is not None:
            wakes.discard(wake)
            if not wakes:
                del self._queue_wakes[queue]

    async def complete_queue_item(
        self, queue: str, item_id: str, token: str | None, encoded: bytes
    ) -> None:
        """Marks a queue item done, completing its deferred (if a workflow waits) with `encoded`.

        Both in one transaction: a crash keeps the result and the done mark, or neither (the
        item is then taken again).
        """
        done = Op.queue_done(queue, item_id)
        if token is None:
            await self._write(done)
            return
        workflow_name, execution_id, name = parse_deferred_token(token)
        try:
            await self.complete_deferred(workflow_name, execution_id, name, encoded, also=(done,))
        except DeferredTokenError:
            # Its execution is gone (or never committed): nobody can take the result.
            log.warning(
                "durable queue %s: item %s names execution %s, which is not stored; "
                "marked done without a result",
                queue,
                item_id,
                execution_id,
                extra=fields(execution_id=execution_id),
            )
            await self._write(done)

    async def store_race(self, execution_id: str, name: str, encoded: bytes) -> bytes:
        """Stores a race's (or `into`'s) outcome as deferred `name`; returns the first stored."""
        stored = await self._write(
            Op.deferred(execution_id, name, encoded, self._shard_of(execution_id))
        )
        if isinstance(stored, Fenced):
            self._refused(execution_id)
        if stored:
            return encoded
        snapshot = await self._journal().snapshot(execution_id)
        if snapshot is None:
            return encoded
        return next(d.value for d in snapshot.deferreds if d.name == name)

    # Operators' reads ----------------------------------------------------------------------

    async def executions(
        self,
        *,
        workflow: str | None = None,
        status: ExecutionStatusName | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> ExecutionPage:
        """Lists the stored executions, newest first, a page at a time.

        Every filter given must hold. Pages follow one another through `after`: pass the
        previous page's `next` (None once nothing is left). Executions started while paging
        are newer than the first page, so they do not appear in later ones.

        Args:
            workflow: Only executions of this workflow (its name, exactly).
            status: Only executions with this status: running, suspended, succeeded, failed
                (a declared error or a defect) or interrupted.
            since: Only executions started at or after this instant (a naive datetime is
                local time).
            until: Only executions started before this instant.
            limit: At most this many, from 1 to 1000.
            after: Where the previous page ended (its `next`).

        Raises:
            InvalidArgumentError: An unknown status, a limit out of range or a cursor that is
                not one.

        Example:
            >>> import asyncio, plait
            >>> Echo = plait.Workflow("ListedEcho", payload={"n": int}, success=int)
            >>> @Echo.implement
            ... async def echo(payload, execution_id):
            ...     return payload.n
            >>> async def main() -> list[str]:
            ...     async with plait.Engine.memory() as engine:
            ...         for n in range(3):
            ...             await Echo.execute({"n": n})
            ...         page = await engine.executions(workflow="ListedEcho", limit=2)
            ...         rest = await engine.executions(workflow="ListedEcho", after=page.next)
            ...         return [e.status for e in page.executions + rest.executions]
            >>> asyncio.run(main())
            ['succeeded', 'succeeded', 'succeeded']
        """
        self.require_loop()
        return await list_executions(
            self._journal(),
            workflow=workflow,
            status=status,
            since=since,
            until=until,
            limit=limit,
            after=after,
        )

    async def execution_counts(
        self,
        *,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cap: int = DEFAULT_COUNT_CAP,
    ) -> dict[ExecutionStatusName, int]:
        """How many stored executions have each status, filtered as `executions` filters.

        Each count stops at `cap` (a count equal to it means "at least"), so that counting
        stays cheap on a large store.

        Raises:
            InvalidArgumentError: `cap` is below 1.
        """
        self.require_loop()
        return await count_executions(
            self._journal(), workflow=workflow, since=since, until=until, cap=cap
        )

    async def timeline(self, execution_id: str) -> ExecutionTimeline:
        """The execution and its journal as a timeline, read from the store.

        Its events, in the order they were stored: its start, each activity attempt's result,
        each deferred's (a durable clock's wake-up, a race's winner), its timers still to fire,
        and where it stands (suspended, or completed with its result).

        Raises:
            UnknownExecutionError: No such execution is stored.
        """
        self.require_loop()
        history = await self._journal().history(execution_id)
        if history is None:
            raise UnknownExecutionError(f"unknown execution {execution_id!r}")
        return timeline_of(history)

    # Durable timers ------------------------------------------------------------------------

    async def schedule_clock(self, execution_id: str, name: str, seconds: float) -> None:
        """Completes deferred `name` of the execution after `seconds`, durably."""
        # Rounded up: a timer never fires before its time (Effect's rule too).
        due = self.clock.now_ms() + max(0, milliseconds_ceil(seconds))
        stored = await self._write(Op.timer(execution_id, name, due, self._shard_of(execution_id)))
        if isinstance(stored, Fenced):
            self._refused(execution_id)
        if stored and self._work is not None:
            self._work.scheduled(execution_id, name, due)
            if metrics() is not None:
                self._timers_due[(execution_id, name)] = due

    # Journal writes ------------------------------------------------------------------------

    def append(self, run: Run, key: str, seq: int, value: bytes) -> None:
        """Stores a step result of `run`.

        In memory it is stored at once. Otherwise it commits with every other write of this
        loop iteration, and `run.sync()` waits for that.
        """
        ex = run.execution
        run.appended += 1
        batch, index = self._journal().queue(Op.append(ex.id, key, seq, value, ex.shard))
        if not batch.done:
            run.unsynced.append((batch, index, key))
        elif batch.results[index] is not True:  # answered at once (memory), and not stored
            run.synced(batch, index, key)


def _outcome(result: Complete[Any] | Suspended | BaseException | None) -> str:
    """How a run ended, as span attributes and metrics name it."""
    if isinstance(result, Complete):
        if isinstance(result.exit, Success):
            return "success"
        return "interrupted" if isinstance(result.exit.error, Interrupted) else "failure"
    if isinstance(result, Suspended):
        return "suspended"
    return "stopped" if result is None else "defect"


def _end_run_span(span: Any, result: Complete[Any] | Suspended | BaseException | None) -> None:
    error: BaseException | None = None
    if isinstance(result, BaseException):
        error = result
    elif isinstance(result, Complete) and isinstance(result.exit, Failure):
        error = result.exit.error
    tracing.end_span(span, _outcome(result), error)


def _count_result(
    counters: Any, workflow: str, result: Complete[Any] | Suspended | BaseException | None
) -> None:
    if isinstance(result, Complete):
        if isinstance(result.exit, Success):
            counters.of(counters.executions_completed, workflow).inc()
        else:
            counters.of(counters.executions_failed, workflow).inc()
    elif isinstance(result, Suspended):
        counters.of(counters.executions_suspended, workflow).inc()
    # A run stopped by a defect of the engine's (non-determinism, an undecodable journal)
    # recorded nothing: the execution is not complete, so it is not counted as failed.


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("plait engine background work failed", exc_info=task.exception())


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("plait engine task %s crashed", task.get_name(), exc_info=task.exception())
