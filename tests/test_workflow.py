"""The workflow engine: results, replay, finalizers, interrupts, children.

Each test runs on the memory store, a SQLite file and PostgreSQL. Several tests restate Effect's
`WorkflowEngine.test.ts` cases; their names say which.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import pytest

import plait
from plait.testing import VirtualClock
from tests.workflow_support import (
    EngineFactory,
    journal_keys,
    poll_until,
    record,
    settle,
    spin,
    stored_count,
)

Gate: plait.DurableDeferred[str] = plait.DurableDeferred("Gate", success=str)
SecondGate: plait.DurableDeferred[str] = plait.DurableDeferred("SecondGate", success=str)


class OutOfStock(plait.TaggedError):
    sku: str
    wanted: int


def gate_token(workflow: plait.Workflow[Any, Any], execution_id: str) -> str:
    return Gate.token_from_execution_id(workflow, execution_id)


# Results and idempotency ---------------------------------------------------------------------

Echo: plait.Workflow[Any, str] = plait.Workflow("WfEcho", payload={"text": str}, success=str)


async def test_execute_returns_the_result_and_poll_reports_it(plait_engine: plait.Engine) -> None:
    runs: list[str] = []

    @Echo.implement
    async def echo(payload: Any, execution_id: str) -> str:
        runs.append(execution_id)
        return str(payload.text).upper()

    assert await Echo.execute({"text": "hi"}) == "HI"
    execution_id = Echo.execution_id({"text": "hi"})
    assert runs == [execution_id]
    assert await Echo.poll(execution_id) == plait.Complete(plait.Success("HI"))
    assert await Echo.poll(Echo.execution_id({"text": "never started"})) is None


async def test_discard_returns_the_deterministic_execution_id(plait_engine: plait.Engine) -> None:
    @Echo.implement
    async def echo(payload: Any, execution_id: str) -> str:
        return str(payload.text) * 2

    execution_id = await Echo.execute({"text": "ab"}, discard=True)
    assert execution_id == Echo.execution_id({"text": "ab"})
    # Effect's id: the first 16 bytes of sha256("<name>-<idempotency key>"), in hex.
    expected = hashlib.sha256(b'WfEcho-{"text":"ab"}').hexdigest()[:32]
    assert execution_id == expected
    assert await poll_until(Echo, execution_id, plait.Complete) == plait.Complete(
        plait.Success("abab")
    )


async def test_an_explicit_execution_id_names_the_execution(plait_engine: plait.Engine) -> None:
    runs: list[str] = []

    @Echo.implement
    async def echo(payload: Any, execution_id: str) -> str:
        runs.append(execution_id)
        return str(payload.text) * 2

    # As a feed-polling cron starts its ticks: the id is the caller's, not the payload's hash.
    execution_id = await Echo.execute({"text": "ab"}, execution_id="poll-7-tick-1", discard=True)
    assert execution_id == "poll-7-tick-1"
    assert await poll_until(Echo, execution_id, plait.Complete) == plait.Complete(
        plait.Success("abab")
    )
    # The same id again joins it (its stored result, nothing run); another id is another run.
    assert await Echo.execute({"text": "zz"}, execution_id="poll-7-tick-1") == "abab"
    assert await Echo.execute({"text": "ab"}, execution_id="poll-7-tick-2") == "abab"
    assert runs == ["poll-7-tick-1", "poll-7-tick-2"]
    with pytest.raises(plait.InvalidArgumentError, match="NUL"):
        await Echo.execute({"text": "ab"}, execution_id="bad\0id")


async def test_executing_again_returns_the_stored_result_without_running(
    plait_engine: plait.Engine, make_engine: EngineFactory
) -> None:
    runs = 0

    @Echo.implement
    async def echo(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        return f"{payload.text}#{runs}"

    assert await Echo.execute({"text": "once"}) == "once#1"
    assert await Echo.execute({"text": "once"}) == "once#1"
    assert await Echo.execute({"text": "once"}, discard=True) == Echo.execution_id({"text": "once"})
    await settle()
    assert runs == 1
    # Another engine on the same store reads the stored result too (after the first closed:
    # a database takes one engine at a time).
    await plait_engine.close()
    async with make_engine.reopen(plait_engine, VirtualClock()) as other:
        assert await Echo.execute({"text": "once"}, engine=other) == "once#1"
    assert runs == 1


Failing: plait.Workflow[Any, str] = plait.Workflow(
    "WfFailing", payload={"kind": str}, success=str, error=OutOfStock
)


async def test_a_failed_execution_returns_its_stored_failure_without_running(
    plait_engine: plait.Engine,
) -> None:
    runs: list[str] = []

    @Failing.implement
    async def failing(payload: Any, execution_id: str) -> str:
        runs.append(payload.kind)
        if payload.kind == "declared":
            raise OutOfStock(sku="sku-1", wanted=3)
        raise RuntimeError("boom")

    for _ in range(2):
        with pytest.raises(OutOfStock) as declared:
            await Failing.execute({"kind": "declared"})
        assert type(declared.value) is OutOfStock
        assert declared.value.fields() == {"sku": "sku-1", "wanted": 3}
        with pytest.raises(plait.Defect) as defect:
            await Failing.execute({"kind": "defect"})
        assert (defect.value.type_name, defect.value.message) == ("RuntimeError", "boom")
    assert runs == ["declared", "defect"]
    declared_id = Failing.execution_id({"kind": "declared"})
    assert await Failing.poll(declared_id) == plait.Complete(
        plait.Failure(OutOfStock(sku="sku-1", wanted=3))
    )


Joined: plait.Workflow[Any, str] = plait.Workflow("WfJoined", payload={"text": str}, success=str)


async def test_execute_joins_a_suspended_execution_and_gets_its_result(
    plait_engine: plait.Engine,
) -> None:
    runs = 0

    @Joined.implement
    async def joined(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        return str(payload.text) + await Gate

    execution_id = await Joined.execute({"text": "a"}, discard=True)
    await poll_until(Joined, execution_id, plait.Suspended)
    caller = asyncio.ensure_future(Joined.execute({"text": "a"}))
    await settle()
    assert not caller.done()
    assert await Gate.succeed(gate_token(Joined, execution_id), "b")
    assert await caller == "ab"
    assert runs == 2


async def test_a_completion_racing_the_suspension_is_never_lost(plait_engine: plait.Engine) -> None:
    @Joined.implement
    async def joined(payload: Any, execution_id: str) -> str:
        return str(payload.text) + await Gate

    # Complete the gate after 0, 1, 2, ... loop iterations, then after a few milliseconds (a
    # SQL store's commits take that long): before, during and after the run parks and
    # suspends. Each execution must end with the gate's value.
    delays: list[tuple[int, float]] = [(rounds, 0) for rounds in range(12)]
    delays += [(0, ms / 1000) for ms in (0.25, 0.5, 1, 2, 3, 5, 8, 13)]
    for rounds, pause in delays:
        text = f"race-{rounds}-{pause}"
        execution_id = await Joined.execute({"text": text}, discard=True)
        await spin(rounds)
        if pause:
            await asyncio.sleep(pause)
        await Gate.succeed(gate_token(Joined, execution_id), "!")
        result = await poll_until(Joined, execution_id, plait.Complete)
        assert result == plait.Complete(plait.Success(f"{text}!")), (rounds, pause)


# Defects ----------------------------------------------------------------------------------------

Strict: plait.Workflow[Any, str] = plait.Workflow(
    "WfStrict", payload={"id": str}, success=str, error=OutOfStock, capture_defects=False
)


async def test_without_capture_defects_a_defect_fails_the_run_and_resume_runs_again(
    plait_engine: plait.Engine,
) -> None:
    runs = 0

    @Strict.implement
    async def strict(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        if payload.id == "declared":
            raise OutOfStock(sku="s", wanted=runs)
        if runs == 1:
            raise RuntimeError("transient")
        return f"recovered on run {runs}"

    with pytest.raises(plait.Defect) as err:
        await Strict.execute({"id": "defect"})
    assert (err.value.type_name, err.value.message) == ("RuntimeError", "transient")
    execution_id = Strict.execution_id({"id": "defect"})
    assert await Strict.poll(execution_id) is None
    await Strict.resume(execution_id)
    assert await poll_until(Strict, execution_id, plait.Complete) == plait.Complete(
        plait.Success("recovered on run 2")
    )
    assert runs == 2
    # A declared error is a result all the same.
    with pytest.raises(OutOfStock):
        await Strict.execute({"id": "declared"})
    declared_id = Strict.execution_id({"id": "declared"})
    assert await Strict.poll(declared_id) == plait.Complete(
        plait.Failure(OutOfStock(sku="s", wanted=3))
    )


async def test_executing_again_after_a_defect_runs_again_even_with_a_workflow_scope(
    plait_engine: plait.Engine,
) -> None:
    runs = 0
    finalized: list[plait.Exit] = []

    @Strict.implement
    async def strict(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        plait.add_finalizer(finalized.append)  # keeps the execution's scope between runs
        if runs == 1:
            raise RuntimeError("transient")
        return f"recovered on run {runs}"

    with pytest.raises(plait.Defect):
        await Strict.execute({"id": "scoped"})
    # Stored as running with no run: the caller joining it starts one.
    assert await asyncio.wait_for(Strict.execute({"id": "scoped"}), 10) == "recovered on run 2"
    assert runs == 2
    assert finalized == [plait.Success("recovered on run 2")] * 2


# Base exceptions that are neither an Exception nor the engine's cancellation -------------------


class Halt(BaseException):
    """Like KeyboardInterrupt, a BaseException that is not an Exception, but of the user's own."""


Halting: plait.Workflow[Any, str] = plait.Workflow(
    "WfHalting", payload={"id": str, "how": str}, success=str
)


def raise_base_exception(how: str) -> None:
    if how == "group":  # what asyncio.TaskGroup raises when a child failed and one was cancelled
        raise BaseExceptionGroup("mixed", [ValueError("bad input"), asyncio.CancelledError()])
    if how == "cancelled":  # a CancelledError of the body's own: its task was not cancelled
        raise asyncio.CancelledError("given up")
    raise Halt("stop here")


BASE_DEFECTS = {
    "group": ("BaseExceptionGroup", "mixed (2 sub-exceptions)"),
    "cancelled": ("asyncio.exceptions.CancelledError", "given up"),
    "halt": (f"{__name__}.Halt", "stop here"),
}


@pytest.mark.parametrize("how", sorted(BASE_DEFECTS))
async def test_a_body_raising_a_base_exception_completes_with_a_defect_even_after_a_restart(
    make_engine: EngineFactory, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The run task died with the exception: `execute` never returned, `poll` stayed None, and a
    # durable engine found the execution running after every restart and failed the same way.
    runs: list[str] = []

    @Halting.implement
    async def halting(payload: Any, execution_id: str) -> str:
        runs.append(payload.how)
        raise_base_exception(payload.how)
        return "unreachable"

    payload = {"id": how, "how": how}
    execution_id = Halting.execution_id(payload)
    defect = plait.Defect(*BASE_DEFECTS[how])
    first = make_engine()
    async with first:
        with pytest.raises(plait.Defect) as err:
            await asyncio.wait_for(Halting.execute(payload), 10)
        assert err.value == defect
        assert await Halting.poll(execution_id) == plait.Complete(plait.Failure(defect))
    assert f"execution {execution_id}" in caplog.text
    assert "recorded as a defect" in caplog.text
    async with make_engine.reopen(first):
        await settle()
        with pytest.raises(plait.Defect) as err:
            await asyncio.wait_for(Halting.execute(payload), 10)
        assert err.value == defect
    assert runs == [how]


StrictHalting: plait.Workflow[Any, str] = plait.Workflow(
    "WfStrictHalting", payload={"id": str, "how": str}, success=str, capture_defects=False
)


async def test_without_capture_defects_a_base_exception_fails_the_callers_not_the_execution(
    plait_engine: plait.Engine,
) -> None:
    @StrictHalting.implement
    async def strict_halting(payload: Any, execution_id: str) -> str:
        raise_base_exception(payload.how)
        return "unreachable"

    with pytest.raises(plait.Defect) as err:
        await asyncio.wait_for(StrictHalting.execute({"id": "strict", "how": "halt"}), 10)
    assert err.value == plait.Defect(*BASE_DEFECTS["halt"])
    assert (
        await StrictHalting.poll(StrictHalting.execution_id({"id": "strict", "how": "halt"}))
        is None
    )


async def test_an_activity_raising_a_base_exception_fails_the_step_with_a_defect(
    plait_engine: plait.Engine,
) -> None:
    calls: list[str] = []

    def halt_sync() -> None:
        calls.append("sync")
        raise_base_exception("halt")

    async def halt_async() -> None:
        calls.append("async")
        raise_base_exception("group")

    @Halting.implement
    async def halting(payload: Any, execution_id: str) -> str:
        seen = []
        for name, body in (("HaltSync", halt_sync), ("HaltAsync", halt_async)):
            try:
                await plait.Activity(name, execute=body)
            except plait.Defect as err:
                seen.append(err.type_name)
        return ",".join(seen) + f"|{await Gate}"

    execution_id = await Halting.execute({"id": "activities", "how": ""}, discard=True)
    await poll_until(Halting, execution_id, plait.Suspended)
    assert await journal_keys(plait_engine, execution_id) == ["HaltSync/1", "HaltAsync/1"]
    # The replay reads both defects from the journal: neither body runs again.
    await Gate.succeed(gate_token(Halting, execution_id), "!")
    assert await poll_until(Halting, execution_id, plait.Complete) == plait.Complete(
        plait.Success(f"{__name__}.Halt,BaseExceptionGroup|!")
    )
    assert calls == ["sync", "async"]


async def test_a_finalizer_or_compensation_raising_a_base_exception_makes_a_defect(
    plait_engine: plait.Engine,
) -> None:
    undone: list[str] = []

    def undo(value: str) -> None:
        undone.append(value)
        raise_base_exception("cancelled")

    def finalizer(exit_: plait.Exit) -> None:
        raise_base_exception("halt")

    @Halting.implement
    async def halting(payload: Any, execution_id: str) -> str:
        plait.add_finalizer(finalizer)
        if payload.how == "compensate":
            await plait.with_compensation(
                plait.Activity("Book", execute=lambda: "booked", success=str), undo
            )
            raise OutOfStock(sku="x", wanted=1)
        return "ok"

    with pytest.raises(plait.Defect) as err:
        await asyncio.wait_for(Halting.execute({"id": "finalizer", "how": "finalize"}), 10)
    assert err.value == plait.Defect(*BASE_DEFECTS["halt"])
    # A failure stays the failure it was; the compensation still ran.
    with pytest.raises(plait.Defect) as err:
        await asyncio.wait_for(Halting.execute({"id": "compensation", "how": "compensate"}), 10)
    assert err.value.type_name == f"{__name__}.OutOfStock"
    assert undone == ["booked"]


Fragile: plait.Workflow[Any, str] = plait.Workflow(
    "WfFragile", payload={"id": str}, success=str, suspend_on_failure=True
)


async def test_suspend_on_failure_suspends_with_the_cause_and_resume_runs_again(
    plait_engine: plait.Engine,
) -> None:
    runs = 0

    @Fragile.implement
    async def fragile(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ConnectionError("dependency down")
        return "fine"

    execution_id = await Fragile.execute({"id": "f"}, discard=True)
    result = await poll_until(Fragile, execution_id, plait.Suspended)
    assert result == plait.Suspended(plait.Defect("ConnectionError", "dependency down"))
    assert isinstance(result.cause, plait.Defect)
    assert "dependency down" in result.cause.traceback
    await settle()
    assert runs == 1
    await Fragile.resume(execution_id)
    assert await poll_until(Fragile, execution_id, plait.Complete) == plait.Complete(
        plait.Success("fine")
    )
    assert runs == 2


Retried: plait.Workflow[Any, str] = plait.Workflow(
    "WfRetried",
    payload={"id": str, "fix_on_run": int},
    success=str,
    suspended_retry=plait.Schedule.spaced(60, times=2),
    suspend_on_failure=True,
)


async def test_suspended_retry_reruns_on_the_engine_clock_then_gives_up(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []

    async def slow() -> None:
        await plait_clock.sleep(1000)

    @Retried.implement
    async def retried(payload: Any, execution_id: str) -> str:
        runs.append(payload.id)
        if payload.id == "slow":
            await plait.Activity("SlowStep", execute=slow)
        if runs.count(payload.id) < payload.fix_on_run:
            raise ConnectionError("not yet")
        return f"ok after {runs.count(payload.id)} runs"

    # `settle()` after each advance: the runs the clock starts read and write the store.
    caller = asyncio.ensure_future(Retried.execute({"id": "fixed", "fix_on_run": 3}))
    await settle()
    assert runs == ["fixed"]
    await plait_clock.advance(60)
    await settle()
    assert runs == ["fixed"] * 2
    await plait_clock.advance(60)
    assert await asyncio.wait_for(caller, 5) == "ok after 3 runs"

    caller = asyncio.ensure_future(Retried.execute({"id": "broken", "fix_on_run": 99}))
    await settle()
    await plait_clock.advance(60)
    await settle()
    await plait_clock.advance(60)
    with pytest.raises(plait.SuspendedRetryExhaustedError, match="WfRetried"):
        await asyncio.wait_for(caller, 5)
    assert runs.count("broken") == 3

    # A long run is not a suspension: the caller waits for it, however long it takes.
    caller = asyncio.ensure_future(Retried.execute({"id": "slow", "fix_on_run": 1}))
    await settle()
    await plait_clock.advance(999)
    await settle()
    assert not caller.done()
    await plait_clock.advance(1)
    assert await asyncio.wait_for(caller, 5) == "ok after 1 runs"


# Finalizers and interrupts --------------------------------------------------------------------

Scoped: plait.Workflow[Any, str] = plait.Workflow("WfScoped", payload={"id": str}, success=str)


async def test_finalizers_registered_before_suspension(plait_engine: plait.Engine) -> None:
    runs = 0
    finalized: list[tuple[int, plait.Exit]] = []

    @Scoped.implement
    async def scoped(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        run = runs

        async def finalizer(exit_: plait.Exit) -> None:
            await asyncio.sleep(0)
            finalized.append((run, exit_))

        plait.add_finalizer(finalizer)
        return await Gate

    execution_id = await Scoped.execute({"id": "fin"}, discard=True)
    await poll_until(Scoped, execution_id, plait.Suspended)
    assert finalized == []
    await Gate.succeed(gate_token(Scoped, execution_id), "done")
    await poll_until(Scoped, execution_id, plait.Complete)
    assert finalized == [(2, plait.Success("done")), (1, plait.Success("done"))]
    assert runs == 2


async def test_a_failing_finalizer_turns_success_into_a_defect(plait_engine: plait.Engine) -> None:
    @Scoped.implement
    async def scoped(payload: Any, execution_id: str) -> str:
        def finalizer(exit_: plait.Exit) -> None:
            raise ValueError("cleanup failed")

        plait.add_finalizer(finalizer)
        return "ok"

    with pytest.raises(plait.Defect) as err:
        await Scoped.execute({"id": "bad-finalizer"})
    assert (err.value.type_name, err.value.message) == ("ValueError", "cleanup failed")


async def test_interrupts_are_hidden_from_body_finalizers_shown_to_workflow_finalizers(
    plait_engine: plait.Engine,
) -> None:
    runs = 0
    body_saw: list[bool] = []
    workflow_saw: list[tuple[bool, plait.Exit]] = []

    @Scoped.implement
    async def scoped(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            plait.add_finalizer(
                lambda exit_: workflow_saw.append((plait.current_instance().interrupted, exit_))
            )
        try:
            return await Gate
        finally:
            body_saw.append(plait.current_instance().interrupted)

    caller = asyncio.ensure_future(Scoped.execute({"id": "interrupted"}))
    execution_id = Scoped.execution_id({"id": "interrupted"})
    await poll_until(Scoped, execution_id, plait.Suspended)
    assert body_saw == [False]
    await Scoped.interrupt(execution_id)
    with pytest.raises(plait.Interrupted) as err:
        await caller
    assert type(err.value) is plait.Interrupted
    assert err.value.execution_id == execution_id
    assert runs == 2
    assert body_saw == [False, False]
    assert workflow_saw == [(True, plait.Failure(plait.Interrupted(execution_id)))]
    interrupted: plait.Complete[str] = plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )
    assert await Scoped.poll(execution_id) == interrupted
    with pytest.raises(plait.Interrupted):
        await Scoped.execute({"id": "interrupted"})
    assert runs == 2


async def test_an_interrupt_survives_a_suspended_replay(plait_engine: plait.Engine) -> None:
    passed_gate: list[str] = []

    @Scoped.implement
    async def scoped(payload: Any, execution_id: str) -> str:
        value = await Gate
        passed_gate.append(value)
        return value

    # The run the interrupt starts replays, suspends on the gate again, and still ends
    # interrupted; the gate completing afterwards changes nothing.
    execution_id = await Scoped.execute({"id": "survives"}, discard=True)
    await poll_until(Scoped, execution_id, plait.Suspended)
    await Scoped.interrupt(execution_id)
    interrupted: plait.Complete[str] = plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )
    assert await poll_until(Scoped, execution_id, plait.Complete) == interrupted
    await Gate.succeed(gate_token(Scoped, execution_id), "late")
    await Scoped.resume(execution_id)
    await settle()
    assert await Scoped.poll(execution_id) == interrupted
    assert passed_gate == []

    # The gate completing while the interrupted run replays: it ends interrupted all the same.
    execution_id = await Scoped.execute({"id": "gate during replay"}, discard=True)
    await poll_until(Scoped, execution_id, plait.Suspended)
    await Scoped.interrupt(execution_id)
    await Gate.succeed(gate_token(Scoped, execution_id), "racing")
    assert await poll_until(Scoped, execution_id, plait.Complete) == plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )


async def test_an_interrupt_during_an_activity_ends_the_execution_interrupted(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    steps: list[str] = []

    async def slow() -> str:
        await plait_engine.clock.sleep(30)
        steps.append("slow done")
        return "slow"

    @Scoped.implement
    async def scoped(payload: Any, execution_id: str) -> str:
        await plait.Activity("Slow", execute=slow, success=str)
        steps.append("after slow")
        return await Gate

    caller = asyncio.ensure_future(Scoped.execute({"id": "mid-activity"}))
    execution_id = Scoped.execution_id({"id": "mid-activity"})
    await settle()
    await Scoped.interrupt(execution_id)
    await plait_clock.advance(30)
    with pytest.raises(plait.Interrupted):
        await caller
    assert steps == ["slow done", "after slow"]


Unsafe: plait.Workflow[Any, str] = plait.Workflow("WfUnsafe", payload={"id": str}, success=str)


def implement_unsafe(engine: plait.Engine, events: list[str]) -> None:
    def book() -> str:
        events.append("booked")
        return "booking"

    async def slow() -> str:
        events.append("slow started")
        try:
            await engine.clock.sleep(3600)
        except asyncio.CancelledError:
            events.append("slow cancelled")
            raise
        events.append("slow done")
        return "slow"

    def never() -> str:
        events.append("after")
        return "after"

    @Unsafe.implement
    async def unsafe(payload: Any, execution_id: str) -> str:
        events.append("run")
        plait.add_finalizer(lambda exit_: events.append(f"finalizer {type(exit_).__name__}"))
        booking = await plait.with_compensation(
            plait.Activity("Book", execute=book, success=str),
            lambda value: events.append(f"undo {value}"),
        )
        if payload.id == "suspended":
            await Gate
        else:
            await plait.Activity("Slow", execute=slow, success=str)
        return booking + await plait.Activity("After", execute=never, success=str)


async def test_interrupt_unsafe_cancels_the_running_activity_now(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    # `interrupt` lets the hour-long activity finish first; `interrupt_unsafe` does not wait.
    events: list[str] = []
    implement_unsafe(plait_engine, events)
    caller = asyncio.ensure_future(Unsafe.execute({"id": "running"}))
    execution_id = Unsafe.execution_id({"id": "running"})
    await settle()
    assert events == ["run", "booked", "slow started"]
    await Unsafe.interrupt_unsafe(execution_id)
    with pytest.raises(plait.Interrupted):
        await asyncio.wait_for(caller, 10)  # no clock advance: nothing waited for the hour
    assert events == [
        "run",
        "booked",
        "slow started",
        "slow cancelled",
        "undo booking",
        "finalizer Failure",
    ]
    assert await Unsafe.poll(execution_id) == plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )
    assert await journal_keys(plait_engine, execution_id) == ["Book/1"]
    await plait_clock.advance(3600)
    await settle()
    assert "slow done" not in events


async def test_interrupt_unsafe_of_a_suspended_execution_replays_and_starts_nothing(
    plait_engine: plait.Engine,
) -> None:
    events: list[str] = []
    implement_unsafe(plait_engine, events)
    execution_id = await Unsafe.execute({"id": "suspended"}, discard=True)
    await poll_until(Unsafe, execution_id, plait.Suspended)
    await Unsafe.interrupt_unsafe(execution_id)
    interrupted: plait.Complete[str] = plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )
    assert await poll_until(Unsafe, execution_id, plait.Complete) == interrupted
    # The replay read the booking from the journal and stopped at the gate: the booking did
    # not run again and its compensation ran once, between the finalizers each run added.
    assert events == [
        "run",
        "booked",
        "run",
        "finalizer Failure",
        "undo booking",
        "finalizer Failure",
    ]
    # Completing the gate afterwards changes nothing.
    await Gate.succeed(gate_token(Unsafe, execution_id), "late")
    await settle()
    assert await Unsafe.poll(execution_id) == interrupted
    assert events.count("after") == 0


StrictUnsafe: plait.Workflow[Any, str] = plait.Workflow(
    "WfStrictUnsafe", payload={"id": str}, success=str, capture_defects=False
)


async def test_interrupt_unsafe_without_a_run_replays_the_journal_and_runs_no_new_step(
    plait_engine: plait.Engine,
) -> None:
    events: list[str] = []

    def step(name: str) -> plait.Activity[str]:
        def run() -> str:
            events.append(name)
            return name

        return plait.Activity(name, execute=run, success=str)

    @StrictUnsafe.implement
    async def strict_unsafe(payload: Any, execution_id: str) -> str:
        events.append("run")
        booking = await plait.with_compensation(
            step("Book"), lambda value: events.append(f"undo {value}")
        )
        if events.count("run") == 1:
            raise RuntimeError("transient")  # no result: stored as running, with no run
        return booking + await step("After")

    with pytest.raises(plait.Defect):
        await StrictUnsafe.execute({"id": "no run"})
    execution_id = StrictUnsafe.execution_id({"id": "no run"})
    await StrictUnsafe.interrupt_unsafe(execution_id)
    assert await poll_until(StrictUnsafe, execution_id, plait.Complete) == plait.Complete(
        plait.Failure(plait.Interrupted(execution_id))
    )
    # `interrupt` would have let this run go on to `After`; the unsafe one stops before it.
    assert events == ["run", "Book", "run", "undo Book"]
    assert await journal_keys(plait_engine, execution_id) == ["Book/1"]


async def test_interrupt_unsafe_of_a_complete_or_unknown_execution_does_nothing(
    plait_engine: plait.Engine,
) -> None:
    @Echo.implement
    async def echo(payload: Any, execution_id: str) -> str:
        return str(payload.text)

    assert await Echo.execute({"text": "done"}) == "done"
    execution_id = Echo.execution_id({"text": "done"})
    await Echo.interrupt_unsafe(execution_id)
    await Echo.interrupt_unsafe("0" * 32)
    assert await Echo.poll(execution_id) == plait.Complete(plait.Success("done"))


# Sagas ------------------------------------------------------------------------------------------

Trip: plait.Workflow[Any, str] = plait.Workflow(
    "WfTrip", payload={"id": str, "fail": bool}, success=str, error=OutOfStock
)
FirstStop: plait.DurableDeferred[None] = plait.DurableDeferred("FirstStop")
SecondStop: plait.DurableDeferred[None] = plait.DurableDeferred("SecondStop")


def implement_trip(booked: dict[str, int], undone: list[str]) -> None:
    def book(item: str) -> plait.Activity[str]:
        def run() -> str:
            booked[item] = booked.get(item, 0) + 1
            return f"{item}-booking"

        return plait.Activity(f"Book{item}", execute=run, success=str)

    async def book_in_a_coroutine(item: str) -> str:  # a step that is not an activity itself
        return await book(item)

    async def cancel_async(booking: str) -> None:
        await asyncio.sleep(0)
        undone.append(booking)

    @Trip.implement
    async def trip(payload: Any, execution_id: str) -> str:
        a = await plait.with_compensation(book("A"), cancel_async)
        await FirstStop
        b = await plait.with_compensation(book_in_a_coroutine("B"), undone.append)
        await SecondStop
        c = await plait.with_compensation(book("C"), undone.append)
        if payload.fail:
            raise OutOfStock(sku=c, wanted=1)
        return ",".join([a, b, c])


async def open_stops(execution_id: str) -> None:
    for stop in (FirstStop, SecondStop):
        await poll_until(Trip, execution_id, plait.Suspended)
        assert await stop.succeed(stop.token_from_execution_id(Trip, execution_id), None)


async def test_compensations_run_in_reverse_once_each_when_the_workflow_fails(
    plait_engine: plait.Engine,
) -> None:
    booked: dict[str, int] = {}
    undone: list[str] = []
    implement_trip(booked, undone)
    payload = {"id": "fails", "fail": True}
    caller = asyncio.ensure_future(Trip.execute(payload))
    await open_stops(Trip.execution_id(payload))
    with pytest.raises(OutOfStock) as err:
        await caller
    assert err.value.sku == "C-booking"
    assert undone == ["C-booking", "B-booking", "A-booking"]
    assert booked == {"A": 1, "B": 1, "C": 1}


async def test_compensations_do_not_run_on_success(plait_engine: plait.Engine) -> None:
    booked: dict[str, int] = {}
    undone: list[str] = []
    implement_trip(booked, undone)
    payload = {"id": "succeeds", "fail": False}
    caller = asyncio.ensure_future(Trip.execute(payload))
    await open_stops(Trip.execution_id(payload))
    assert await caller == "A-booking,B-booking,C-booking"
    assert undone == []
    assert booked == {"A": 1, "B": 1, "C": 1}


async def test_compensations_run_when_the_execution_is_interrupted(
    plait_engine: plait.Engine,
) -> None:
    booked: dict[str, int] = {}
    undone: list[str] = []
    implement_trip(booked, undone)
    payload = {"id": "interrupted", "fail": False}
    execution_id = await Trip.execute(payload, discard=True)
    await poll_until(Trip, execution_id, plait.Suspended)
    await FirstStop.succeed(FirstStop.token_from_execution_id(Trip, execution_id), None)
    await settle()
    await poll_until(Trip, execution_id, plait.Suspended)
    await Trip.interrupt(execution_id)
    await poll_until(Trip, execution_id, plait.Complete)
    assert undone == ["B-booking", "A-booking"]
    assert booked == {"A": 1, "B": 1}


# Child workflows ------------------------------------------------------------------------------

Child: plait.Workflow[Any, str] = plait.Workflow("WfChild", payload={"id": str}, success=str)
Parent: plait.Workflow[Any, str] = plait.Workflow("WfParent", payload={"id": str}, success=str)
ChildGate: plait.DurableDeferred[str] = plait.DurableDeferred("ChildGate", success=str)


def implement_family(runs: dict[str, int]) -> None:
    @Child.implement
    async def child(payload: Any, execution_id: str) -> str:
        runs["child"] = runs.get("child", 0) + 1
        if payload.id.startswith("instant"):
            return "instant"
        return f"child:{await ChildGate}"

    @Parent.implement
    async def parent(payload: Any, execution_id: str) -> str:
        runs["parent"] = runs.get("parent", 0) + 1
        return f"parent({await Child.execute({'id': payload.id})})"


async def test_a_child_that_completes_at_once_gives_its_result_to_the_parent(
    plait_engine: plait.Engine,
) -> None:
    runs: dict[str, int] = {}
    implement_family(runs)
    assert await Parent.execute({"id": "instant"}) == "parent(instant)"
    assert runs == {"parent": 1, "child": 1}
    child_id = Child.execution_id({"id": "instant"})
    child = await record(plait_engine, child_id)
    assert child is not None
    assert child.parent == Parent.execution_id({"id": "instant"})


async def test_a_suspended_child_suspends_the_parent_and_its_completion_resumes_it(
    plait_engine: plait.Engine,
) -> None:
    runs: dict[str, int] = {}
    implement_family(runs)
    parent_id = await Parent.execute({"id": "1"}, discard=True)
    child_id = Child.execution_id({"id": "1"})
    await poll_until(Parent, parent_id, plait.Suspended)
    await poll_until(Child, child_id, plait.Suspended)
    token = ChildGate.token_from_execution_id(Child, child_id)
    assert await ChildGate.succeed(token, "ok")
    assert await poll_until(Parent, parent_id, plait.Complete) == plait.Complete(
        plait.Success("parent(child:ok)")
    )
    assert await Child.poll(child_id) == plait.Complete(plait.Success("child:ok"))
    assert runs == {"parent": 2, "child": 2}


async def test_interrupting_the_parent_interrupts_the_child(plait_engine: plait.Engine) -> None:
    runs: dict[str, int] = {}
    implement_family(runs)
    caller = asyncio.ensure_future(Parent.execute({"id": "2"}))
    parent_id = Parent.execution_id({"id": "2"})
    child_id = Child.execution_id({"id": "2"})
    await poll_until(Child, child_id, plait.Suspended)
    await poll_until(Parent, parent_id, plait.Suspended)
    await Parent.interrupt(parent_id)
    with pytest.raises(plait.Interrupted) as err:
        await caller
    assert err.value.execution_id == parent_id
    assert await poll_until(Child, child_id, plait.Complete) == plait.Complete(
        plait.Failure(plait.Interrupted(child_id))
    )
    # The child's deferred completing later changes nothing.
    await ChildGate.succeed(ChildGate.token_from_execution_id(Child, child_id), "late")
    await settle()
    assert await Child.poll(child_id) == plait.Complete(plait.Failure(plait.Interrupted(child_id)))


# Engine lifecycle -----------------------------------------------------------------------------

Forever: plait.Workflow[Any, str] = plait.Workflow("WfForever", payload={"id": str}, success=str)


async def test_closing_the_engine_fails_waiting_callers_with_engine_closed(
    make_engine: EngineFactory,
) -> None:
    never = asyncio.Event()
    started = asyncio.Event()

    @Forever.implement
    async def forever(payload: Any, execution_id: str) -> str:
        if payload.id == "parked":
            return await Gate
        started.set()
        await never.wait()
        return "unreachable"

    engine = make_engine(VirtualClock())
    await engine.start()
    busy = asyncio.ensure_future(Forever.execute({"id": "busy"}, engine=engine))
    parked = asyncio.ensure_future(Forever.execute({"id": "parked"}, engine=engine))
    await started.wait()
    await poll_until(
        Forever, Forever.execution_id({"id": "parked"}), plait.Suspended, engine=engine
    )
    await engine.close()
    for caller in (busy, parked):
        with pytest.raises(plait.EngineClosedError) as err:
            await caller
        assert isinstance(err.value, plait.Interrupted)
    # Read back by an engine started on the same store (it resumes the running execution).
    async with make_engine.reopen(engine, VirtualClock()) as again:
        busy_record = await record(again, Forever.execution_id({"id": "busy"}))
    assert busy_record is not None
    assert busy_record.status == "running"


# Non-determinism ------------------------------------------------------------------------------

Drifting: plait.Workflow[Any, str] = plait.Workflow("WfDrifting", payload={"id": str}, success=str)


async def test_a_replay_calling_other_steps_raises_non_determinism(
    plait_engine: plait.Engine,
) -> None:
    calls: list[str] = []

    def step(name: str) -> plait.Activity[str]:
        def run() -> str:
            calls.append(name)
            return name

        return plait.Activity(name, execute=run, success=str)

    async def original(payload: Any, execution_id: str) -> str:
        first = await step("A")
        return first + await Gate

    async def changed(payload: Any, execution_id: str) -> str:
        try:
            first = await step("B")
        except Exception:  # a body cannot swallow the error
            first = "swallowed"
        return first + await Gate

    Drifting.implement(original)
    caller = asyncio.ensure_future(Drifting.execute({"id": "1"}))
    execution_id = Drifting.execution_id({"id": "1"})
    await poll_until(Drifting, execution_id, plait.Suspended)
    Drifting.implement(changed)
    await Gate.succeed(gate_token(Drifting, execution_id), "!")
    with pytest.raises(plait.NonDeterminismError) as err:
        await caller
    assert err.value.execution_id == execution_id
    assert (err.value.position, err.value.expected, err.value.found) == (0, "A/1", "B/1")
    assert execution_id in str(err.value)
    assert calls == ["A"]
    assert not isinstance(await Drifting.poll(execution_id), plait.Complete)
    assert await journal_keys(plait_engine, execution_id) == ["A/1"]

    Drifting.implement(original)
    await Drifting.resume(execution_id)
    assert await poll_until(Drifting, execution_id, plait.Complete) == plait.Complete(
        plait.Success("A!")
    )
    assert calls == ["A"]


# Decorators and engines -------------------------------------------------------------------------

greeter_runs: list[str] = []


@plait.workflow(name="WfGreeter", idempotency_key=lambda p: f"{p.a}/{p.b}")
async def greeter(a: int, b: str, execution_id: str = "") -> str:
    greeter_runs.append(execution_id)
    return f"{b * a}@{execution_id}"


async def test_workflow_decorator_payload_from_the_signature(plait_engine: plait.Engine) -> None:
    greeter_runs.clear()
    execution_id = plait.execution_id("WfGreeter", "2/x")
    assert greeter.name == "WfGreeter"
    assert list(greeter.payload_model.model_fields) == ["a", "b"]
    assert greeter.execution_id({"a": 2, "b": "x"}) == execution_id
    assert await greeter(a=2, b="x") == f"xx@{execution_id}"
    assert await greeter(2, "x") == f"xx@{execution_id}"
    assert await greeter.execute({"a": 2, "b": "x"}) == f"xx@{execution_id}"
    assert greeter_runs == [execution_id]
    assert await greeter(a=3, b="y") == f"yyy@{plait.execution_id('WfGreeter', '3/y')}"
    with pytest.raises(plait.PayloadError):
        await greeter(a=1)  # type: ignore[call-arg]
    with pytest.raises(plait.PayloadError):
        await greeter(a="not a number", b="x")  # type: ignore[arg-type]


Located: plait.Workflow[Any, str] = plait.Workflow("WfLocated", payload={"id": str}, success=str)


async def test_async_with_engine_and_explicit_engine_argument(make_engine: EngineFactory) -> None:
    @Located.implement
    async def located(payload: Any, execution_id: str) -> str:
        return f"{payload.id}:{threading.get_ident()}"

    ambient = make_engine(VirtualClock())
    explicit = make_engine(VirtualClock())
    await explicit.start()
    try:
        async with ambient as entered:
            assert entered is ambient
            await Located.execute({"id": "ambient"})
            await Located.execute({"id": "explicit"}, engine=explicit)
        with pytest.raises(plait.NoEngineError):
            await Located.execute({"id": "after the block"})
        # The closed engine's store, read by an engine started on it.
        async with make_engine.reopen(ambient, VirtualClock()) as reopened:
            for engine, kept, absent in (
                (reopened, "ambient", "explicit"),
                (explicit, "explicit", "ambient"),
            ):
                assert await record(engine, Located.execution_id({"id": kept})) is not None
                assert await record(engine, Located.execution_id({"id": absent})) is None
                assert await stored_count(engine) == 1
    finally:
        await explicit.close()


async def test_no_engine_raises_no_engine_error(make_engine: EngineFactory) -> None:
    @Located.implement
    async def located(payload: Any, execution_id: str) -> str:
        return "never"

    with pytest.raises(plait.NoEngineError):
        await Located.execute({"id": "nowhere"})
    with pytest.raises(plait.NoEngineError):
        await Located.poll("0" * 32)
    unstarted = make_engine(VirtualClock())
    with pytest.raises(plait.NoEngineError):
        await Located.execute({"id": "unstarted"}, engine=unstarted)
    await unstarted.start()  # to read its store: nothing was stored
    assert await stored_count(unstarted) == 0
