"""One run of an execution: the journal it replays, its steps, parks and suspension.

A run executes the workflow body from the top. Each step (activity, deferred, clock) looks up
its result in the journal read at the start of the run; a missing activity result runs the
activity and is durable before anything leaves the run. Awaiting a deferred with no result
parks the run; once no activity is in flight the run is cancelled and ends `Suspended`.

This module is the narrow interface the public API (`Activity`, `DurableDeferred`,
`DurableClock`, `with_compensation`) talks to: `run_state()` gives the current `Run`, whose
public methods are all the API uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, NoReturn, Protocol

from plait._native import Fenced
from plait.clocks import Clock
from plait.engine.signals import (
    ActivitySuspended,
    ShardMoved,
    StoredFirst,
    passes_through,
    unexpected,
)
from plait.engine.specs import DeferredSpec, StepSpec, WorkflowSpec
from plait.errors import JournalDecodeError, NonDeterminismError, NotInWorkflowError
from plait.exits import Complete, Exit, ExitCodec, Failure, Success, Suspended
from plait.journal import Batch, Journal, Snapshot
from plait.observability import tracing
from plait.observability.metrics import metrics

__all__ = [
    "Execution",
    "Race",
    "Run",
    "RunHost",
    "WorkflowInstance",
    "current_activity",
    "current_attempt",
    "current_instance",
    "current_race",
    "current_run",
    "run_state",
]

#: The run this code is part of (None outside workflows).
current_run: ContextVar[Run | None] = ContextVar("plait.run", default=None)
#: The race whose branch this code is (None outside races).
current_race: ContextVar[Race | None] = ContextVar("plait.race", default=None)
#: The attempt of the step being retried (1 outside `Activity.retry`).
current_attempt: ContextVar[int] = ContextVar("plait.attempt", default=1)
#: The run whose activity body is running here (None in the workflow body itself).
current_activity: ContextVar[Run | None] = ContextVar("plait.activity", default=None)

Finalizer = Callable[[Exit], Awaitable[Any] | None]


class RunHost(Protocol):
    """What a run needs of the engine that runs it."""

    clock: Clock
    #: Shards moving away from this runner: their runs start no new activity.
    leaving: set[str]

    @property
    def journal(self) -> Journal | None:
        """The store, as the engine writes it."""
        ...

    def require_loop(self) -> asyncio.AbstractEventLoop:
        """The engine's event loop (raises if it is not started)."""
        ...

    def append(self, run: Run, key: str, seq: int, value: bytes) -> None:
        """Stores a step result of `run` (durable by the run's next `sync`)."""
        ...

    async def store_race(self, execution_id: str, name: str, encoded: bytes) -> bytes:
        """Stores a race's outcome as deferred `name`; returns the first stored."""
        ...

    async def schedule_clock(self, execution_id: str, name: str, seconds: float) -> None:
        """Completes deferred `name` of the execution after `seconds`, durably."""
        ...

    async def offer(self, queue: str, item_id: str, payload: bytes, token: str | None) -> bool:
        """Stores a durable queue item unless one with its id is stored; wakes the workers."""
        ...


def run_state(what: str) -> Run:
    """The current run, for the workflow API.

    Raises:
        NotInWorkflowError: Called outside a workflow run (`what` says what was called).
    """
    run = current_run.get()
    if run is None:
        msg = f"{what} can only be used inside a workflow run"
        raise NotInWorkflowError(msg)
    return run


def current_instance() -> WorkflowInstance:
    """The workflow run this code is part of.

    Raises:
        NotInWorkflowError: Called outside a workflow run.
    """
    return WorkflowInstance(run_state("current_instance()"))


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

    def __init__(self, run: Run) -> None:
        self._run = run
        self.execution_id = run.execution.id
        self.workflow = run.execution.workflow.name

    @property
    def interrupted(self) -> bool:  # noqa: D102
        return self._run.interrupted

    @property
    def suspended(self) -> bool:  # noqa: D102
        return self._run.suspended


class Execution:
    """An execution this engine is running, or keeping state for between runs."""

    __slots__ = (
        "children",
        "compensated",
        "finalizers",
        "id",
        "interrupted",
        "parent",
        "payload",
        "resumed",
        "run",
        "run_waiters",
        "runs",
        "shard",
        "trace",
        "waiters",
        "wake",
        "workflow",
    )

    def __init__(
        self, execution_id: str, workflow: WorkflowSpec, payload: Any, parent: str | None
    ) -> None:
        self.id = execution_id
        self.workflow = workflow
        self.payload = payload
        self.parent = parent
        #: On a runner of a cluster, the shard its journal is written as the owner of (None:
        #: a single engine, which holds every shard).
        self.shard: str | None = None
        self.interrupted = False
        self.run: Run | None = None
        # Waiters for the final result, and for the end of the current run (child awaits).
        self.waiters: list[asyncio.Future[Complete[Any]]] = []
        self.run_waiters: list[asyncio.Future[Complete[Any] | Suspended]] = []
        # The workflow scope: lives across runs of this execution in this process.
        self.finalizers: list[Finalizer] = []
        # Which `with_compensation` calls (by order in a run) registered their undo.
        self.compensated: set[int] = set()
        self.children: set[str] = set()
        self.wake = False
        # Runs of it this engine started (the `plait.attempt` of a run's span), counted
        # while tracing; whether the current one replays a stored journal.
        self.runs = 0
        self.resumed = False
        # The OpenTelemetry context the runs' spans are children of (the start's span, or
        # the traceparent stored with the payload); None when not tracing.
        self.trace: Any = None


class _Park:
    """One await parked on a deferred with no result yet."""

    __slots__ = ("future", "owner")

    def __init__(self, future: asyncio.Future[bytes], owner: Run | Race) -> None:
        self.future = future
        self.owner = owner

    def release(self) -> None:
        self.owner.unpark()


class Race:
    """Branches of a race; parked as a whole only when no branch can still win.

    The race takes one position in the run's call order, shared by every step of its
    branches: a replay that finds the race's result stored runs no branch.
    """

    __slots__ = ("branches", "failed", "parked", "run", "run_parked", "seq")

    def __init__(self, run: Run, branches: int, seq: int) -> None:
        self.run = run
        self.branches = branches
        self.seq = seq
        self.parked = 0
        self.failed = 0
        self.run_parked = False

    def park(self) -> None:
        """A branch parked on a deferred with no result."""
        self.parked += 1
        self.check()

    def unpark(self) -> None:
        """A parked branch goes on (or is gone)."""
        self.parked -= 1
        if self.run_parked:
            self.run_parked = False
            self.run.unpark()

    def branch_failed(self) -> None:
        """A branch failed: it can no longer win."""
        self.failed += 1
        self.check()

    def check(self) -> None:
        """Parks the run once every branch is parked or failed: none can win now."""
        if not self.run_parked and self.parked and self.parked + self.failed >= self.branches:
            self.run_parked = True
            self.run.park()


class Run:
    """One run of an execution: the journal it replays and its suspension bookkeeping."""

    __slots__ = (
        "appended",
        "body_done",
        "compensations",
        "counts",
        "deferreds",
        "engine",
        "execution",
        "fatal",
        "in_flight",
        "interrupted",
        "interrupting",
        "journal",
        "next_seq",
        "parked",
        "parks",
        "seqs",
        "suspend_scheduled",
        "suspended",
        "task",
        "traced",
        "unsynced",
    )

    def __init__(self, engine: RunHost, execution: Execution) -> None:
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
        # An unsafe interrupt: the body is cancelled, and a replay starts nothing new.
        self.interrupting = False
        self.body_done = False
        self.fatal: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        # This run's step results queued for a commit and not yet known to be durable: the
        # batch, the op's index there, and the step's key.
        self.unsynced: list[tuple[Batch, int, str]] = []
        # Step results this run stored (beside those it loaded).
        self.appended = 0
        # Whether the run's span is sampled: its steps open spans only then (the sampler
        # decided at the execution's start; see `tracing.start_span`).
        self.traced = False

    def load(self, snapshot: Snapshot) -> None:
        """Takes the stored step results and deferred results to replay."""
        for entry in snapshot.entries:
            key = entry.key
            self.journal[key] = entry.value
            self.seqs[entry.seq] = key
        for deferred in snapshot.deferreds:
            self.deferreds[deferred.name] = deferred.value

    # What the API reads ------------------------------------------------------------------

    @property
    def execution_id(self) -> str:
        """The execution this run belongs to."""
        return self.execution.id

    @property
    def workflow_name(self) -> str:
        """The execution's workflow."""
        return self.execution.workflow.name

    @property
    def clock(self) -> Clock:
        """The engine's clock."""
        return self.engine.clock

    @property
    def stopped(self) -> bool:
        """Whether the run was stopped (`fail`): nothing more of it is recorded."""
        return self.fatal is not None

    def has_step(self, name: str, attempt: int) -> bool:
        """Whether the journal holds the next use of step `name` at `attempt`."""
        return self.key_of(name, attempt, consume=False) in self.journal

    # Steps -------------------------------------------------------------------------------

    def key_of(self, name: str, attempt: int, *, consume: bool) -> str:
        """The journal key of the next use of `name` at `attempt` (`name#2/1` the 2nd time)."""
        count = self.counts.get((name, attempt), 0) + 1
        if consume:
            self.counts[(name, attempt)] = count
        return f"{name}/{attempt}" if count == 1 else f"{name}#{count}/{attempt}"

    def position(self) -> int:
        """The next position in call order: inside a race, the race's own."""
        race = current_race.get()
        if race is not None and race.run is self:
            return race.seq
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def step(self, name: str, attempt: int) -> tuple[str, int]:
        """The key and position of the next use of step `name` (checked against the journal)."""
        key = self.key_of(name, attempt, consume=True)
        race = current_race.get()
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
        """A stored exit; a journal that no longer decodes stops the run."""
        try:
            return codec.decode(data)
        except JournalDecodeError as err:
            where = f"workflow {self.execution.workflow.name!r}, execution {self.execution.id}"
            self.fail(JournalDecodeError(f"{where}: {err}"))

    async def activity(self, activity: StepSpec, attempt: int) -> Any:
        """The step's result: stored, or run now and stored."""
        key, seq = self.step(activity.name, attempt)
        stored = self.journal.get(key)
        if stored is not None:
            return self.decode(activity.codec, stored).unwrap()
        if self.interrupting:
            await self.stop_here()
        if self.execution.shard in self.engine.leaving:
            # Its shard is moving to another runner: that runner runs this step, not this one.
            self.fail(ShardMoved(self.execution.id))
        self.in_flight += 1
        inside = current_activity.set(self)
        outcome: Exit | None = None
        span = token = None
        if self.traced:
            span = tracing.start_span(
                "plait.activity",
                {
                    "plait.activity": activity.name,
                    "plait.attempt": attempt,
                    "plait.execution_id": self.execution.id,
                },
            )
            assert span is not None
            token = tracing.activate(span)
        counters = metrics()
        started = time.perf_counter() if counters is not None else 0.0
        try:
            if self.unsynced:  # the body may have side effects: what came before is durable
                await self.sync()
            try:
                if activity.is_async:  # the common case, without run_body's extra coroutine
                    try:
                        outcome = Success(await activity.execute())
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is None or task.cancelling():
                            raise
                        # Cancelled from inside: that was the first attempt of the interrupt
                        # retries, so `run_body` goes on with the first delay, not another run.
                        outcome = await activity.run_body(self.engine.clock, interrupted=True)
                    except Exception as exc:  # the codec sorts declared errors from defects
                        outcome = Failure(exc)
                    except BaseException as exc:
                        if passes_through(exc):
                            raise
                        outcome = unexpected(f"activity {activity.name!r}", exc)
                else:
                    outcome = await activity.run_body(self.engine.clock)
            except ActivitySuspended:
                outcome = None  # nothing stored: a later run executes the body again
            if outcome is not None:
                encoded, outcome = activity.codec.settle(outcome)
                self.engine.append(self, key, seq, encoded)
        finally:
            current_activity.reset(inside)
            self.in_flight -= 1
            if counters is not None:
                _count_activity(counters, activity.name, attempt, outcome, started)
            if span is not None:
                tracing.deactivate(token)
                _end_step_span(span, outcome)
            self.maybe_suspend()
        if outcome is None:
            await self.wait_forever()
        return outcome.unwrap()

    async def sync(self) -> None:
        """Waits until every step result of this run is durable.

        Results are committed in the background while the body goes on; nothing leaves the
        run (an activity body, a child, a finalizer, the result) before they are durable.
        A commit that failed stops the run.
        """
        unsynced = self.unsynced
        journal = self.engine.journal
        assert journal is not None
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
        result = batch.results[index]
        if result is False:
            self.fail(StoredFirst(self.execution.id, key))
        if isinstance(result, Fenced):
            self.fail(ShardMoved(self.execution.id))

    # Deferreds ---------------------------------------------------------------------------

    async def await_deferred(self, deferred: DeferredSpec) -> Any:
        """The deferred's result, parking the run until it has one."""
        return self.decode(deferred.codec, await self.deferred_value(deferred.name)).unwrap()

    async def deferred_value(self, name: str) -> bytes:
        """The encoded result of deferred `name`, parking the run until it has one."""
        stored = self.deferreds.get(name)
        if stored is not None:
            return stored
        self.suspend_activity_body()
        if self.interrupting:
            await self.stop_here()
        future: asyncio.Future[bytes] = self.engine.require_loop().create_future()
        race = current_race.get()
        owner: Run | Race = self if race is None or race.run is not self else race
        park = _Park(future, owner)
        self.parks.setdefault(name, []).append(park)
        owner.park()
        span = None
        # A durable sleep's wait is in the span the sleep opened (`plait.sleep`).
        if self.traced and not name.startswith("DurableClock/"):
            span = tracing.start_span(
                "plait.deferred.wait",
                {"plait.deferred": name, "plait.execution_id": self.execution.id},
            )
        try:
            value = await future
            if span is not None:
                tracing.end_span(span, "completed")
                span = None
            return value
        finally:
            if span is not None:  # cancelled: the run suspends (or stops) meanwhile
                tracing.end_span(span, "suspended")
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

    async def durable_sleep(self, name: str, seconds: float) -> None:
        """Sleeps `seconds` on a stored timer completing the deferred `DurableClock/<name>`.

        The run suspends meanwhile. A name used again in the same run gets `<name>#2`, ...
        """
        key = self.key_of(f"DurableClock/{name}", 0, consume=True)
        deferred_name = key.rsplit("/", 1)[0]
        if deferred_name in self.deferreds:  # replayed: it slept in an earlier run
            return
        if self.interrupting:
            await self.stop_here()
        span = token = None
        if self.traced:
            span = tracing.start_span(
                "plait.sleep",
                {
                    "plait.sleep": deferred_name,
                    "plait.sleep.seconds": seconds,
                    "plait.execution_id": self.execution.id,
                },
            )
            assert span is not None
            token = tracing.activate(span)
        outcome = "suspended"
        try:
            await self.engine.schedule_clock(self.execution.id, deferred_name, seconds)
            await self.deferred_value(deferred_name)
            outcome = "completed"
        finally:
            if span is not None:
                tracing.deactivate(token)
                tracing.end_span(span, outcome)

    async def queue_offer(
        self, queue: str, item_id: str, payload: bytes, deferred_name: str, token: str
    ) -> None:
        """Offers a durable queue item whose result completes deferred `deferred_name`.

        Once per item: a replay that holds the deferred's result offers nothing, and an offer
        made again (a replay before the result) is a no-op in the store. The offer has an
        effect outside the run (a worker runs the item), so the run's results are durable
        first. An offer the store fails stops the run, as a failed commit does.
        """
        if deferred_name in self.deferreds:
            return
        if self.interrupting:
            await self.stop_here()
        await self.sync()
        try:
            await self.engine.offer(queue, item_id, payload, token)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.fail(err)

    async def wait_forever(self) -> NoReturn:
        """Parks the run for good: it suspends once no activity is in flight.

        In a race's branch it parks the race, which parks the run once no branch can win.
        """
        self.suspend_activity_body()
        future: asyncio.Future[bytes] = self.engine.require_loop().create_future()
        race = current_race.get()
        owner: Run | Race = self if race is None or race.run is not self else race
        owner.park()
        try:
            await future
        finally:
            owner.unpark()
        raise AssertionError  # pragma: no cover - a parked run is cancelled, never resumed

    def suspend_activity_body(self) -> None:
        """In one of this run's activity bodies, raises `ActivitySuspended` (Effect's rule).

        An activity that waits on a deferred, a durable clock or a suspended child suspends the
        workflow; it does not wait in memory while the run goes on, so in a race it cannot win
        before a replay runs it again.
        """
        if current_activity.get() is self:
            raise ActivitySuspended

    # The workflow scope ------------------------------------------------------------------

    def add_finalizer(self, finalizer: Finalizer) -> None:
        """Runs `finalizer(exit)` once, when the execution completes."""
        self.execution.finalizers.append(finalizer)

    def next_compensation(self) -> int:
        """The call order of a `with_compensation` in this run (1, 2, ...)."""
        self.compensations += 1
        return self.compensations

    def add_compensation(self, call: int, compensate: Finalizer) -> None:
        """Registers the undo of compensation `call`, once per execution however many replays."""
        ex = self.execution
        if call not in ex.compensated:
            ex.compensated.add(call)
            ex.finalizers.append(compensate)

    # Unsafe interrupts ---------------------------------------------------------------------

    def stop_now(self) -> None:
        """Marks the run interrupted at once and cancels its body, unless the body has ended."""
        self.interrupting = True
        if self.task is not None and not self.body_done:
            self.task.cancel()

    async def stop_here(self) -> None:
        """Stops the run where the body would start something new (an unsafe interrupt).

        The replay of an interrupted run goes as far as the journal holds, which registers the
        compensations of the steps done, and no further: no activity body, child, timer or park.
        """
        if self.task is None or self.body_done:
            return  # a finalizer's step: the body is over, nothing to cancel
        self.stop_now()
        # In the run's task, the cancellation lands here at once; in a race's branch, the race
        # cancels this branch as the run's cancellation reaches it.
        await self.engine.require_loop().create_future()

    # Suspension ----------------------------------------------------------------------------

    def park(self) -> None:
        """An await of the run parked: it suspends once no activity is in flight."""
        self.parked += 1
        self.maybe_suspend()

    def unpark(self) -> None:
        """A parked await goes on (or is gone)."""
        self.parked -= 1

    def maybe_suspend(self) -> None:
        """Suspends the run soon if it is parked with no activity in flight."""
        if self.parked and not self.in_flight and not self.suspend_scheduled:
            self.suspend_scheduled = True
            self.engine.require_loop().call_soon(self._suspend_if_still_parked)

    def _suspend_if_still_parked(self) -> None:
        self.suspend_scheduled = False
        if self.parked and not self.in_flight and not self.body_done and self.task is not None:
            self.suspended = True
            self.task.cancel()


def _end_step_span(span: Any, outcome: Exit | None) -> None:
    if outcome is None:
        tracing.end_span(span, "suspended")
    elif isinstance(outcome, Failure):
        tracing.end_span(span, "failure", outcome.error)
    else:
        tracing.end_span(span, "success")


def _count_activity(
    counters: Any, name: str, attempt: int, outcome: Exit | None, started: float
) -> None:
    label = (
        "suspended" if outcome is None else "failure" if isinstance(outcome, Failure) else "success"
    )
    counters.of(counters.activity_duration, name, label).observe(time.perf_counter() - started)
    if attempt > 1:
        counters.of(counters.activity_retries, name).inc()
