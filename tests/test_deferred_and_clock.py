"""Durable deferreds (completed from outside, raced, failed) and durable clocks (short, long).

Each test runs on the memory store, a SQLite file and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

import plait
from plait.testing import VirtualClock
from tests.workflow_support import (
    EngineFactory,
    deferred_names,
    journal_keys,
    poll_until,
    settle,
    timers,
)


class CardDeclined(plait.TaggedError):
    reason: str
    code: int


# Races of deferreds -------------------------------------------------------------------------------

Signal: plait.DurableDeferred[str] = plait.DurableDeferred("DeferredRaceSignal", success=str)
OtherSignal: plait.DurableDeferred[str] = plait.DurableDeferred("OtherSignal", success=str)
DeferredRace: plait.Workflow[Any, str] = plait.Workflow(
    "DcDeferredRace", payload={"id": str}, success=str
)


def implement_deferred_race(engine: plait.Engine, runs: list[str]) -> None:
    async def timeout() -> str:
        await engine.clock.sleep(10)
        return "timeout"

    @DeferredRace.implement
    async def deferred_race(payload: Any, execution_id: str) -> str:
        runs.append(execution_id)
        result: str = await plait.DurableDeferred.race_all(
            "memory-deferred-race", [Signal, timeout()], success=str
        )
        return result


async def test_layer_memory_wakes_an_active_workflow_when_a_durable_deferred_completes(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    implement_deferred_race(plait_engine, runs)
    caller = asyncio.ensure_future(DeferredRace.execute({"id": "signal"}))
    execution_id = DeferredRace.execution_id({"id": "signal"})
    await settle()
    # Parked on the signal while the sleeping branch runs: active, not suspended.
    assert await DeferredRace.poll(execution_id) is None
    assert not caller.done()
    token = Signal.token_from_execution_id(DeferredRace, execution_id)
    assert await Signal.succeed(token, "signal")
    assert await asyncio.wait_for(caller, 5) == "signal"
    assert 1 <= len(runs) <= 2
    assert "raceAll/memory-deferred-race" in await deferred_names(plait_engine, execution_id)
    await plait_clock.advance(10)
    assert await DeferredRace.execute({"id": "signal"}) == "signal"
    assert await DeferredRace.poll(execution_id) == plait.Complete(plait.Success("signal"))
    assert 1 <= len(runs) <= 2


async def test_the_other_branch_of_a_deferred_race_wins_when_no_signal_comes(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    implement_deferred_race(plait_engine, runs)
    caller = asyncio.ensure_future(DeferredRace.execute({"id": "timeout"}))
    await settle()
    await plait_clock.advance(9.999)
    await settle()
    assert not caller.done()
    await plait_clock.advance(0.001)
    assert await asyncio.wait_for(caller, 5) == "timeout"
    # The signal coming late is stored but changes nothing.
    execution_id = DeferredRace.execution_id({"id": "timeout"})
    await Signal.succeed(Signal.token_from_execution_id(DeferredRace, execution_id), "late")
    await settle()
    assert await DeferredRace.poll(execution_id) == plait.Complete(plait.Success("timeout"))
    assert len(runs) == 1


async def test_a_race_of_deferreds_only_suspends_and_the_first_completed_wins(
    plait_engine: plait.Engine,
) -> None:
    runs = 0

    @DeferredRace.implement
    async def deferred_race(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        winner: str = await plait.DurableDeferred.race_all(
            "either", [Signal, OtherSignal], success=str
        )
        return winner

    execution_id = await DeferredRace.execute({"id": "either"}, discard=True)
    await poll_until(DeferredRace, execution_id, plait.Suspended)
    token = OtherSignal.token_from_execution_id(DeferredRace, execution_id)
    assert await OtherSignal.succeed(token, "other")
    assert await poll_until(DeferredRace, execution_id, plait.Complete) == plait.Complete(
        plait.Success("other")
    )
    assert runs == 2


# Completing deferreds -----------------------------------------------------------------------------

Inbox: plait.DurableDeferred[str] = plait.DurableDeferred("Inbox", success=str, error=CardDeclined)
Receiver: plait.Workflow[Any, str] = plait.Workflow(
    "DcReceiver", payload={"id": str}, success=str, error=CardDeclined
)


def implement_receiver(engine: plait.Engine, runs: list[str], tokens: list[str]) -> None:
    async def prepare() -> None:
        await engine.clock.sleep(30)

    @Receiver.implement
    async def receiver(payload: Any, execution_id: str) -> str:
        runs.append(execution_id)
        tokens.append(Inbox.token())
        await plait.Activity("Prepare", execute=prepare)
        try:
            return await Inbox
        except CardDeclined as err:
            return f"{type(err).__name__}: {err.reason} ({err.code})"


async def test_a_deferred_completed_before_it_is_awaited_is_read_without_suspending(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    tokens: list[str] = []
    implement_receiver(plait_engine, runs, tokens)
    execution_id = await Receiver.execute({"id": "early"}, discard=True)
    await settle()
    token = Inbox.token_from_payload(Receiver, {"id": "early"})
    assert tokens == [token]
    assert plait.DeferredToken.parse(token) == ("DcReceiver", execution_id, "Inbox")
    assert await Inbox.succeed(token, "first")
    assert not await Inbox.succeed(token, "second")
    assert await Receiver.poll(execution_id) is None
    await plait_clock.advance(30)
    assert await poll_until(Receiver, execution_id, plait.Complete) == plait.Complete(
        plait.Success("first")
    )
    assert runs == [execution_id]
    assert not await Inbox.succeed(token, "third")
    await settle()
    assert await Receiver.poll(execution_id) == plait.Complete(plait.Success("first"))
    assert runs == [execution_id]


async def test_a_second_completion_of_a_suspended_deferred_changes_nothing(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    implement_receiver(plait_engine, runs, [])
    execution_id = await Receiver.execute({"id": "twice"}, discard=True)
    await plait_clock.advance(30)
    await poll_until(Receiver, execution_id, plait.Suspended)
    token = Inbox.token_from_execution_id(Receiver, execution_id)
    assert await Inbox.succeed(token, "kept")
    assert not await Inbox.succeed(token, "ignored")
    assert not await Inbox.fail(token, CardDeclined(reason="ignored", code=1))
    assert await poll_until(Receiver, execution_id, plait.Complete) == plait.Complete(
        plait.Success("kept")
    )
    assert len(runs) == 2


async def test_failing_a_deferred_raises_the_typed_error_in_the_workflow(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    implement_receiver(plait_engine, runs, [])
    execution_id = await Receiver.execute({"id": "declined"}, discard=True)
    await plait_clock.advance(30)
    await poll_until(Receiver, execution_id, plait.Suspended)
    token = Inbox.token_from_execution_id(Receiver, execution_id)
    assert await Inbox.fail(token, CardDeclined(reason="stolen card", code=43))
    assert await poll_until(Receiver, execution_id, plait.Complete) == plait.Complete(
        plait.Success("CardDeclined: stolen card (43)")
    )


async def test_failing_a_deferred_with_an_undeclared_error_raises_a_defect(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    runs: list[str] = []
    implement_receiver(plait_engine, runs, [])
    execution_id = await Receiver.execute({"id": "undeclared"}, discard=True)
    await plait_clock.advance(30)
    await poll_until(Receiver, execution_id, plait.Suspended)
    token = Inbox.token_from_execution_id(Receiver, execution_id)
    assert await Inbox.fail(token, PermissionError("no"))
    result = await poll_until(Receiver, execution_id, plait.Complete)
    assert result == plait.Complete(plait.Failure(plait.Defect("PermissionError", "no")))


# Running into a deferred --------------------------------------------------------------------------

Charged: plait.DurableDeferred[str] = plait.DurableDeferred(
    "Charged", success=str, error=CardDeclined
)
Noted: plait.DurableDeferred[str] = plait.DurableDeferred("Noted", success=str)
IntoGate: plait.DurableDeferred[str] = plait.DurableDeferred("IntoGate", success=str)
Into: plait.Workflow[Any, str] = plait.Workflow(
    "DcInto", payload={"id": str, "fail": bool, "late": bool}, success=str
)


def implement_into(calls: list[str]) -> None:
    def charge(fail: bool) -> str:
        calls.append("charge")
        if fail:
            raise CardDeclined(reason="insufficient funds", code=51)
        return "ch_1"

    async def note() -> str:  # a coroutine, not an activity
        calls.append("note")
        return "noted"

    def after() -> str:
        calls.append("after")
        return "after"

    @Into.implement
    async def into(payload: Any, execution_id: str) -> str:
        if payload.late:
            await IntoGate
        step = plait.Activity(
            "Charge", execute=lambda: charge(payload.fail), success=str, error=CardDeclined
        )
        try:
            charged = await Charged.into(step)
        except CardDeclined as err:
            charged = f"declined: {err.reason}"
        # Right after the skipped step: a replay would put it at `Charge`'s position if the
        # steps inside `into` did not share the position of `into` itself.
        later = await plait.Activity("After", execute=after, success=str)
        noted = await plait.DurableDeferred.into(Noted, note())
        try:
            seen = await Charged  # the deferred itself holds what `into` stored
        except CardDeclined:
            seen = "declined"
        gate = "" if payload.late else await IntoGate
        return f"{charged}|{noted}|{later}|{seen}|{gate}"


@pytest.mark.parametrize("fail", [False, True], ids=["success", "failure"])
async def test_into_completes_the_deferred_with_the_outcome_and_a_replay_reads_it(
    plait_engine: plait.Engine, fail: bool
) -> None:
    calls: list[str] = []
    implement_into(calls)
    execution_id = await Into.execute({"id": "into", "fail": fail, "late": False}, discard=True)
    await poll_until(Into, execution_id, plait.Suspended)
    assert calls == ["charge", "after", "note"]
    assert {"Charged", "Noted"} <= await deferred_names(plait_engine, execution_id)
    assert await journal_keys(plait_engine, execution_id) == ["Charge/1", "After/1"]
    # The replay takes both outcomes from the deferreds: neither awaitable runs again, and
    # `After` keeps its place in call order.
    await IntoGate.succeed(IntoGate.token_from_execution_id(Into, execution_id), "!")
    charged = "declined: insufficient funds" if fail else "ch_1"
    seen = "declined" if fail else "ch_1"
    assert await poll_until(Into, execution_id, plait.Complete) == plait.Complete(
        plait.Success(f"{charged}|noted|after|{seen}|!")
    )
    assert calls == ["charge", "after", "note"]
    # Completing the deferred from outside now changes nothing: the first result stays.
    assert not await Charged.succeed(Charged.token_from_execution_id(Into, execution_id), "late")


async def test_into_a_deferred_completed_from_outside_does_not_run_its_awaitable(
    plait_engine: plait.Engine,
) -> None:
    calls: list[str] = []
    implement_into(calls)
    execution_id = await Into.execute({"id": "late", "fail": False, "late": True}, discard=True)
    await poll_until(Into, execution_id, plait.Suspended)
    assert await Charged.succeed(Charged.token_from_execution_id(Into, execution_id), "ch_outside")
    await settle()
    await poll_until(Into, execution_id, plait.Suspended)
    await IntoGate.succeed(IntoGate.token_from_execution_id(Into, execution_id), "go")
    assert await poll_until(Into, execution_id, plait.Complete) == plait.Complete(
        plait.Success("ch_outside|noted|after|ch_outside|")
    )
    assert calls == ["after", "note"]


# Durable clocks -----------------------------------------------------------------------------------

Napper: plait.Workflow[Any, str] = plait.Workflow(
    "DcNapper", payload={"id": str, "seconds": float, "threshold": float}, success=str
)


def implement_napper(events: list[str], *, twice: bool = False) -> None:
    @Napper.implement
    async def napper(payload: Any, execution_id: str) -> str:
        events.append("run")
        await plait.DurableClock.sleep(
            "nap", payload.seconds, in_memory_threshold=payload.threshold
        )
        events.append("woke")
        if twice:
            await plait.DurableClock.sleep(
                "nap", timedelta(seconds=payload.seconds), in_memory_threshold=payload.threshold
            )
            events.append("woke again")
        return "rested"


def nap(execution: str, seconds: float, threshold: float = 60.0) -> dict[str, Any]:
    return {"id": execution, "seconds": seconds, "threshold": threshold}


async def test_a_sleep_up_to_the_threshold_runs_in_process_as_an_activity(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []
    implement_napper(events)
    execution_id = await Napper.execute(nap("short", 60), discard=True)
    await settle()
    assert await Napper.poll(execution_id) is None  # running, not suspended
    assert await timers(plait_engine) == []
    await plait_clock.advance(59.9)
    await settle()
    assert events == ["run"]
    await plait_clock.advance(0.1)
    assert await poll_until(Napper, execution_id, plait.Complete) == plait.Complete(
        plait.Success("rested")
    )
    assert events == ["run", "woke"]
    assert await journal_keys(plait_engine, execution_id) == ["DurableClock/nap/1"]


async def test_a_longer_sleep_suspends_on_a_stored_timer_and_passes_at_once(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []
    implement_napper(events)
    started = time.monotonic()
    start_ms = plait_clock.now_ms()
    execution_id = await Napper.execute(nap("long", 8 * 3600), discard=True)
    await poll_until(Napper, execution_id, plait.Suspended)
    assert await timers(plait_engine) == [
        (execution_id, "DurableClock/nap", start_ms + 8 * 3_600_000)
    ]
    await settle()
    await plait_clock.advance(timedelta(hours=7, minutes=59))
    await settle()
    assert await Napper.poll(execution_id) == plait.Suspended()
    assert events == ["run"]
    await plait_clock.advance(timedelta(minutes=1))
    assert await poll_until(Napper, execution_id, plait.Complete) == plait.Complete(
        plait.Success("rested")
    )
    assert events == ["run", "run", "woke"]
    await settle()
    assert await timers(plait_engine) == []
    assert "DurableClock/nap" in await deferred_names(plait_engine, execution_id)
    assert time.monotonic() - started < 5


async def test_a_zero_threshold_makes_even_a_short_sleep_durable(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []
    implement_napper(events)
    execution_id = await Napper.execute(nap("forced", 1, threshold=0), discard=True)
    await poll_until(Napper, execution_id, plait.Suspended)
    await plait_clock.advance(1)
    await poll_until(Napper, execution_id, plait.Complete)
    assert await journal_keys(plait_engine, execution_id) == []
    assert events == ["run", "run", "woke"]


async def test_a_zero_sleep_returns_at_once(plait_engine: plait.Engine) -> None:
    events: list[str] = []
    implement_napper(events)
    assert await Napper.execute(nap("zero", 0, threshold=0)) == "rested"
    execution_id = Napper.execution_id(nap("zero", 0, threshold=0))
    assert events == ["run", "woke"]
    assert await journal_keys(plait_engine, execution_id) == []
    assert await deferred_names(plait_engine, execution_id) == set()


async def test_a_fractional_millisecond_sleep_is_rounded_up_and_never_fires_early(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    # Effect rounds a timer's duration up: 1.4 ms waits 2 ms, on a stored timer and in process
    # alike (rounding to nearest made both fire after 1 ms).
    events: list[str] = []
    implement_napper(events)
    start_ms = plait_clock.now_ms()
    durable = await Napper.execute(nap("fraction durable", 0.0014, threshold=0), discard=True)
    in_process = await Napper.execute(nap("fraction in process", 0.0014), discard=True)
    await poll_until(Napper, durable, plait.Suspended)
    assert await timers(plait_engine) == [(durable, "DurableClock/nap", start_ms + 2)]
    await settle()
    await plait_clock.advance(0.001)
    await settle()
    assert await Napper.poll(durable) == plait.Suspended()
    assert await Napper.poll(in_process) is None
    assert events == ["run", "run"]
    await plait_clock.advance(0.001)
    rested: plait.Complete[str] = plait.Complete(plait.Success("rested"))
    assert await poll_until(Napper, durable, plait.Complete) == rested
    assert await poll_until(Napper, in_process, plait.Complete) == rested
    assert plait_clock.now_ms() == start_ms + 2


async def test_one_clock_name_used_twice_sleeps_twice(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []
    implement_napper(events, twice=True)
    long_id = await Napper.execute(nap("twice long", 3600), discard=True)
    short_id = await Napper.execute(nap("twice short", 30), discard=True)
    await poll_until(Napper, long_id, plait.Suspended)
    # `settle()` around each advance: a woken step is committed before the next sleep starts.
    await settle()
    await plait_clock.advance(30)
    await settle()
    assert await Napper.poll(short_id) is None
    await plait_clock.advance(30)
    assert await poll_until(Napper, short_id, plait.Complete) == plait.Complete(
        plait.Success("rested")
    )
    assert await journal_keys(plait_engine, short_id) == [
        "DurableClock/nap/1",
        "DurableClock/nap#2/1",
    ]
    assert await Napper.poll(long_id) == plait.Suspended()
    await plait_clock.advance(3600 - 60)
    await settle()
    await poll_until(Napper, long_id, plait.Suspended)
    assert await deferred_names(plait_engine, long_id) == {"DurableClock/nap"}
    await plait_clock.advance(3600)
    assert await poll_until(Napper, long_id, plait.Complete) == plait.Complete(
        plait.Success("rested")
    )
    assert await deferred_names(plait_engine, long_id) == {"DurableClock/nap", "DurableClock/nap#2"}


async def test_a_stored_timer_fires_in_a_new_engine_on_the_same_store(
    make_engine: EngineFactory,
) -> None:
    events: list[str] = []
    implement_napper(events)
    clock = VirtualClock(start=1_700_000_000_000)
    first = make_engine(clock)
    async with first:
        execution_id = await Napper.execute(nap("restart", 3600), discard=True)
        await poll_until(Napper, execution_id, plait.Suspended)
    later = VirtualClock(start=clock.now_ms())
    async with make_engine.reopen(first, later):
        await settle()
        assert await Napper.poll(execution_id) == plait.Suspended()
        await later.advance(timedelta(hours=1))
        assert await poll_until(Napper, execution_id, plait.Complete) == plait.Complete(
            plait.Success("rested")
        )
    assert events == ["run", "run", "woke"]


def in_memory(engine: plait.Engine) -> set[tuple[str, str]]:
    """The timers an engine's work source holds in its wheel, as (execution id, deferred)."""
    assert engine._work is not None
    return set(engine._work.source.timers_in_memory())


async def test_only_timers_due_within_the_horizon_are_in_memory(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    """A sleep of hours is a row in the store; the wheel takes it when it comes near."""
    events: list[str] = []
    implement_napper(events)
    soon = await Napper.execute(nap("horizon-soon", 90), discard=True)
    later = await Napper.execute(nap("horizon-later", 3 * 3600), discard=True)
    await poll_until(Napper, soon, plait.Suspended)
    await poll_until(Napper, later, plait.Suspended)
    # 90 s is past the 60 s horizon too: neither is in memory yet.
    assert in_memory(plait_engine) == set()
    assert len(await timers(plait_engine)) == 2
    # Loaded half a horizon ahead of its time, with the next window.
    await plait_clock.advance(59)
    await settle()
    assert in_memory(plait_engine) == set()
    await plait_clock.advance(2)
    await settle()
    assert in_memory(plait_engine) == {(soon, "DurableClock/nap")}
    await plait_clock.advance(29)
    assert await poll_until(Napper, soon, plait.Complete) == plait.Complete(plait.Success("rested"))
    assert in_memory(plait_engine) == set()
    await plait_clock.advance(timedelta(hours=2, minutes=58))
    await settle()
    assert await Napper.poll(later) == plait.Suspended()
    await plait_clock.advance(timedelta(minutes=1))
    assert await poll_until(Napper, later, plait.Complete) == plait.Complete(
        plait.Success("rested")
    )
    assert await timers(plait_engine) == []


async def test_many_timers_due_at_once_all_fire_once_in_a_new_engine(
    make_engine: EngineFactory,
) -> None:
    """The work source fires them in batches and hands them over a batch at a time.

    (That it never holds more than a bounded number of snapshots for the engine is its own
    Rust test, `work::tests::no_more_than_the_cap_of_snapshots_waits_for_the_host`.)
    """
    events: list[str] = []
    implement_napper(events)
    clock = VirtualClock(start=1_700_000_000_000)
    first = make_engine(clock)
    async with first:
        ids = await asyncio.gather(
            *(Napper.execute(nap(f"bounded-{n}", 600), discard=True) for n in range(40))
        )
        for execution_id in ids:
            await poll_until(Napper, execution_id, plait.Suspended)
    later = VirtualClock(start=clock.now_ms() + 3_600_000)
    async with make_engine.reopen(first, later) as engine:
        for execution_id in ids:
            await poll_until(Napper, execution_id, plait.Complete, engine=engine)
        await settle()
        assert engine._work is not None
        assert not engine._work.source.busy()
        assert await timers(engine) == []
    assert events.count("woke") == 40


async def test_sleep_rejects_a_duration_that_is_not_one(plait_engine: plait.Engine) -> None:
    @Napper.implement
    async def napper(payload: Any, execution_id: str) -> str:
        with pytest.raises(plait.InvalidArgumentError):
            await plait.DurableClock.sleep("bad", "10 minutes")  # type: ignore[arg-type]
        return "checked"

    assert await Napper.execute(nap("bad", 0)) == "checked"
