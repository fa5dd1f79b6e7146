"""Activities: journaling, retries and attempts, repeated names, races, typed errors, threads.

Each test runs on the memory store, a SQLite file and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from datetime import timedelta
from typing import Any

import pytest

import plait
from plait.testing import VirtualClock
from tests.workflow_support import deferred_names, journal_keys, poll_until, settle

Gate: plait.DurableDeferred[str] = plait.DurableDeferred("Gate", success=str)


class CardDeclined(plait.TaggedError):
    reason: str
    code: int
    retryable: bool = False


def gate_token(workflow: plait.Workflow[Any, Any], execution_id: str) -> str:
    return Gate.token_from_execution_id(workflow, execution_id)


# Retries and attempts ----------------------------------------------------------------------------

Retrying: plait.Workflow[Any, str] = plait.Workflow(
    "ActRetrying", payload={"id": str, "spaced": bool}, success=str
)


def implement_retrying(attempts: list[int], keys: list[str]) -> None:
    async def flaky() -> str:  # on the loop, so virtual time alone drives the retries
        attempt = plait.current_attempt()
        attempts.append(attempt)
        keys.append(plait.Activity.idempotency_key("charge", include_attempt=True))
        if attempt < 3:
            raise ConnectionError(f"attempt {attempt} failed")
        return f"charged on attempt {attempt}"

    @Retrying.implement
    async def retrying(payload: Any, execution_id: str) -> str:
        step = plait.Activity("Flaky", execute=flaky, success=str)
        if payload.spaced:
            result = await plait.Activity.retry(
                step, schedule=plait.Schedule.spaced(timedelta(seconds=5), times=3)
            )
        else:
            result = await plait.Activity.retry(step, times=2)
        return result + await Gate


async def test_retry_times_runs_attempts_1_2_3_each_journaled_once(
    plait_engine: plait.Engine,
) -> None:
    attempts: list[int] = []
    keys: list[str] = []
    implement_retrying(attempts, keys)
    execution_id = await Retrying.execute({"id": "times", "spaced": False}, discard=True)
    await poll_until(Retrying, execution_id, plait.Suspended)
    assert attempts == [1, 2, 3]
    assert await journal_keys(plait_engine, execution_id) == ["Flaky/1", "Flaky/2", "Flaky/3"]
    assert keys == [plait.activity_idempotency_key(execution_id, "charge", n) for n in (1, 2, 3)]
    # A replay reads each attempt from the journal: nothing runs again.
    await Gate.succeed(gate_token(Retrying, execution_id), "!")
    assert await poll_until(Retrying, execution_id, plait.Complete) == plait.Complete(
        plait.Success("charged on attempt 3!")
    )
    assert attempts == [1, 2, 3]


async def test_retry_with_a_schedule_waits_between_attempts_on_the_engine_clock(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    attempts: list[int] = []
    implement_retrying(attempts, [])
    execution_id = await Retrying.execute({"id": "spaced", "spaced": True}, discard=True)
    # `settle()` after each advance: a woken attempt's result is committed before the retry
    # sleeps again.
    await settle()
    assert attempts == [1]
    assert await Retrying.poll(execution_id) is None
    await plait_clock.advance(4.9)
    await settle()
    assert attempts == [1]
    await plait_clock.advance(0.1)
    await settle()
    assert attempts == [1, 2]
    await plait_clock.advance(5)
    await settle()
    assert attempts == [1, 2, 3]
    await poll_until(Retrying, execution_id, plait.Suspended)
    # The replay neither re-runs attempts nor sleeps again: no clock advance is needed.
    await Gate.succeed(gate_token(Retrying, execution_id), "?")
    assert await poll_until(Retrying, execution_id, plait.Complete) == plait.Complete(
        plait.Success("charged on attempt 3?")
    )
    assert attempts == [1, 2, 3]


Exhausting: plait.Workflow[Any, str] = plait.Workflow(
    "ActExhausting", payload={"id": str}, success=str, error=CardDeclined
)


async def test_retry_raises_the_last_failure_once_the_retries_run_out(
    plait_engine: plait.Engine,
) -> None:
    attempts: list[int] = []

    def declined() -> str:
        attempts.append(plait.current_attempt())
        raise CardDeclined(reason=f"try {plait.current_attempt()}", code=51)

    @Exhausting.implement
    async def exhausting(payload: Any, execution_id: str) -> str:
        step = plait.Activity("Declined", execute=declined, success=str, error=CardDeclined)
        return await plait.Activity.retry(step, times=2)

    with pytest.raises(CardDeclined) as err:
        await Exhausting.execute({"id": "x"})
    assert err.value == CardDeclined(reason="try 3", code=51)
    assert attempts == [1, 2, 3]


SelfCancelling: plait.Workflow[Any, str] = plait.Workflow(
    "ActSelfCancelling", payload={"id": str, "sync": bool, "retried": bool}, success=str
)


async def wait_for(done: Any, *, within: float = 10.0) -> None:
    """Lets the engine (and its worker threads) run until `done()` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("retried", [False, True], ids=["alone", "under-retry"])
async def test_a_body_cancelled_from_inside_runs_once_per_attempt_each_after_its_delay(
    plait_engine: plait.Engine, plait_clock: VirtualClock, sync: bool, retried: bool
) -> None:
    # An async body that raised CancelledError ran again at once (a 12th run under an
    # 11-attempt interrupt retry, the first retry without its delay); a sync one did not.
    start = plait_clock.now_ms()
    runs: list[tuple[int, int]] = []  # (attempt, virtual ms since start)

    def cancelled() -> str:
        runs.append((plait.current_attempt(), plait_clock.now_ms() - start))
        raise asyncio.CancelledError

    async def cancelled_async() -> str:
        return cancelled()

    @SelfCancelling.implement
    async def self_cancelling(payload: Any, execution_id: str) -> str:
        body: Any = cancelled if payload.sync else cancelled_async
        step: plait.Activity[str] = plait.Activity(
            "Cancels",
            execute=body,
            success=str,
            interrupt_retry=plait.Schedule.spaced(1, times=10 if not payload.retried else 2),
        )
        try:
            if payload.retried:
                return await plait.Activity.retry(step, schedule=plait.Schedule.spaced(5, times=1))
            return await step
        except plait.Defect as err:
            return err.message

    if retried:  # 3 runs an attempt, 1 s apart; the 2nd attempt 5 s after the 1st gave up
        expected = [(1, 0), (1, 1000), (1, 2000), (2, 7000), (2, 8000), (2, 9000)]
    else:  # the first run and 10 retries, 1 s apart
        expected = [(1, n * 1000) for n in range(11)]
    execution_id = await SelfCancelling.execute(
        {"id": f"{sync}-{retried}", "sync": sync, "retried": retried}, discard=True
    )
    for count, (_, at) in enumerate(expected):
        since = plait_clock.now_ms() - start
        if at > since:
            await plait_clock.advance((at - since - 1) / 1000)
            await settle()
            await asyncio.sleep(0.01)  # a worker thread would have run by now
            await settle()
            assert len(runs) == count, "a retry ran before its delay"
            await plait_clock.advance(0.001)
        await wait_for(lambda count=count: len(runs) > count)
        await settle()
    assert await poll_until(SelfCancelling, execution_id, plait.Complete) == plait.Complete(
        plait.Success('Activity "Cancels" interrupted and retry attempts exhausted')
    )
    assert runs == expected


Keyed: plait.Workflow[Any, list[str]] = plait.Workflow(
    "ActKeyed", payload={"id": str}, success=list[str]
)


async def test_idempotency_keys_match_effect(plait_engine: plait.Engine) -> None:
    @Keyed.implement
    async def keyed(payload: Any, execution_id: str) -> list[str]:
        return [
            plait.Activity.idempotency_key("charge"),
            plait.Activity.idempotency_key("charge", include_attempt=True),
        ]

    execution_id = Keyed.execution_id({"id": "k"})
    plain, with_attempt = await Keyed.execute({"id": "k"})
    assert plain == plait.activity_idempotency_key(execution_id, "charge")
    assert with_attempt == plait.activity_idempotency_key(execution_id, "charge", 1)
    assert plain == hashlib.sha256(f"{execution_id}-charge".encode()).hexdigest()[:32]
    assert with_attempt == hashlib.sha256(f"{execution_id}-1-charge".encode()).hexdigest()[:32]
    assert plain != with_attempt


# Repeated names -----------------------------------------------------------------------------------

bump_calls: dict[int, int] = {}


@plait.activity(name="Bump")
async def bump(i: int) -> int:
    bump_calls[i] = bump_calls.get(i, 0) + 1
    return i * 10


Looping: plait.Workflow[Any, list[int]] = plait.Workflow(
    "ActLooping", payload={"n": int}, success=list[int]
)


async def test_repeated_activity_names_are_distinct_steps(plait_engine: plait.Engine) -> None:
    bump_calls.clear()
    runs = 0

    @Looping.implement
    async def looping(payload: Any, execution_id: str) -> list[int]:
        nonlocal runs
        runs += 1
        values = [await bump(i) for i in range(payload.n)]
        await Gate
        return values

    execution_id = await Looping.execute({"n": 3}, discard=True)
    await poll_until(Looping, execution_id, plait.Suspended)
    assert bump_calls == {0: 1, 1: 1, 2: 1}
    assert await journal_keys(plait_engine, execution_id) == ["Bump/1", "Bump#2/1", "Bump#3/1"]
    await Gate.succeed(gate_token(Looping, execution_id), "go")
    assert await poll_until(Looping, execution_id, plait.Complete) == plait.Complete(
        plait.Success([0, 10, 20])
    )
    assert runs == 2
    assert bump_calls == {0: 1, 1: 1, 2: 1}


# Races --------------------------------------------------------------------------------------------

Racing: plait.Workflow[Any, str] = plait.Workflow("ActRacing", payload={"id": str}, success=str)


async def test_race_all_first_success_wins_and_losers_are_cancelled(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []
    runs = 0

    def contender(name: str, seconds: float, *, fail: bool = False) -> plait.Activity[str]:
        async def run() -> str:
            events.append(f"{name} started")
            try:
                await plait_clock.sleep(seconds)
            except asyncio.CancelledError:
                events.append(f"{name} cancelled")
                raise
            if fail:
                events.append(f"{name} failed")
                raise RuntimeError(f"{name} failed")
            events.append(f"{name} won")
            return name

        return plait.Activity(name, execute=run, success=str)

    after_calls: list[str] = []

    def after() -> str:
        after_calls.append("after")
        return "after"

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        nonlocal runs
        runs += 1
        winner: str = await plait.Activity.race_all(
            "contest",
            [
                contender("fast", 5),
                contender("failing", 1, fail=True),
                contender("slow", 20),
            ],
        )
        tail = await plait.Activity("After", execute=after, success=str)
        return f"{winner}+{tail}+{await Gate}"

    execution_id = await Racing.execute({"id": "r"}, discard=True)
    await settle()
    await plait_clock.advance(1)
    await settle()
    assert "failing failed" in events
    assert await Racing.poll(execution_id) is None
    await plait_clock.advance(4)
    await poll_until(Racing, execution_id, plait.Suspended)
    assert sorted(events) == sorted(
        [
            "slow started",
            "failing started",
            "fast started",
            "failing failed",
            "fast won",
            "slow cancelled",
        ]
    )
    assert "raceAll/Activity/contest" in await deferred_names(plait_engine, execution_id)
    # The replay reads the stored winner: no contender runs again.
    await Gate.succeed(gate_token(Racing, execution_id), "!")
    assert await poll_until(Racing, execution_id, plait.Complete) == plait.Complete(
        plait.Success("fast+after+!")
    )
    assert runs == 2
    assert len(events) == 6
    assert after_calls == ["after"]


def napping_contender(events: list[str]) -> plait.Activity[str]:
    """An activity whose body sleeps two minutes on a durable clock (past the 60 s threshold)."""

    async def napping() -> str:
        events.append("napper started")
        await plait.DurableClock.sleep("nap", timedelta(minutes=2))
        events.append("napper woke")
        return "napper"

    return plait.Activity("Napper", execute=napping, success=str)


async def test_an_activity_on_a_durable_clock_cannot_win_a_race_before_a_replay(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    # As in Effect, the napping activity suspends instead of waiting in memory: its timer
    # firing while the other contender runs does not make it the winner (it did).
    events: list[str] = []

    async def slow() -> str:
        events.append("slow started")
        await plait_clock.sleep(300)
        events.append("slow done")
        return "slow"

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        contenders = [napping_contender(events), plait.Activity("Slow", execute=slow, success=str)]
        return str(await plait.Activity.race_all("naps", contenders))

    execution_id = await Racing.execute({"id": "nap vs slow"}, discard=True)
    await settle()
    await plait_clock.advance(timedelta(minutes=2))  # the nap's timer fires
    await settle()
    assert await Racing.poll(execution_id) is None
    assert sorted(events) == ["napper started", "slow started"]
    await plait_clock.advance(timedelta(minutes=3))
    assert await poll_until(Racing, execution_id, plait.Complete) == plait.Complete(
        plait.Success("slow")
    )
    assert sorted(events) == ["napper started", "slow done", "slow started"]
    assert "DurableClock/nap" in await deferred_names(plait_engine, execution_id)


async def test_an_activity_on_a_durable_clock_suspends_and_wins_the_race_on_the_replay(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    events: list[str] = []

    def failing() -> str:
        events.append("failing")
        raise RuntimeError("no luck")

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        contenders = [
            napping_contender(events),
            plait.Activity("Failing", execute=failing, success=str),
        ]
        return str(await plait.Activity.race_all("naps", contenders))

    # The other contender failed: nothing can win in memory, so the execution suspends.
    execution_id = await Racing.execute({"id": "nap vs failure"}, discard=True)
    await poll_until(Racing, execution_id, plait.Suspended)
    assert sorted(events) == ["failing", "napper started"]
    assert await journal_keys(plait_engine, execution_id) == ["Failing/1"]
    await settle()
    # The timer resumes it; the replay runs the napping body again, which now passes its
    # sleep and wins, and reads the failure from the journal.
    await plait_clock.advance(timedelta(minutes=2))
    assert await poll_until(Racing, execution_id, plait.Complete) == plait.Complete(
        plait.Success("napper")
    )
    assert sorted(events) == ["failing", "napper started", "napper started", "napper woke"]


async def test_an_activity_awaiting_a_deferred_suspends_the_workflow_and_runs_again(
    plait_engine: plait.Engine,
) -> None:
    bodies: list[str] = []

    async def waits_for_gate() -> str:
        bodies.append("started")
        return f"gate said {await Gate}"

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        return await plait.Activity("WaitsForGate", execute=waits_for_gate, success=str)

    execution_id = await Racing.execute({"id": "gate in activity"}, discard=True)
    await poll_until(Racing, execution_id, plait.Suspended)
    assert await journal_keys(plait_engine, execution_id) == []
    await Gate.succeed(gate_token(Racing, execution_id), "go")
    assert await poll_until(Racing, execution_id, plait.Complete) == plait.Complete(
        plait.Success("gate said go")
    )
    assert bodies == ["started", "started"]


fetched: list[int] = []


@plait.activity(name="Fetch")
async def fetch(i: int) -> int:
    fetched.append(i)
    return i * 100


async def test_a_replayed_race_leaves_later_uses_of_its_names_their_own_steps(
    plait_engine: plait.Engine,
) -> None:
    fetched.clear()

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        first = await plait.Activity.race_all("fetches", [fetch(1), fetch(2)])
        later = await fetch(3)
        return f"{first},{later},{await Gate}"

    execution_id = await Racing.execute({"id": "names"}, discard=True)
    await poll_until(Racing, execution_id, plait.Suspended)
    assert fetched[-1] == 3
    await Gate.succeed(gate_token(Racing, execution_id), "!")
    assert await poll_until(Racing, execution_id, plait.Complete) == plait.Complete(
        plait.Success("100,300,!")
    )
    assert fetched.count(3) == 1
    assert "Fetch#3/1" in await journal_keys(plait_engine, execution_id)


async def test_race_all_of_failures_raises_the_first(plait_engine: plait.Engine) -> None:
    def failing(message: str) -> plait.Activity[str]:
        def run() -> str:
            raise CardDeclined(reason=message, code=5)

        return plait.Activity(f"Fail-{message}", execute=run, success=str, error=CardDeclined)

    @Racing.implement
    async def racing(payload: Any, execution_id: str) -> str:
        try:
            return str(await plait.Activity.race_all("losers", [failing("a"), failing("b")]))
        except CardDeclined as err:
            return f"declined {err.reason} {err.code}"

    assert await Racing.execute({"id": "all fail"}) in ("declined a 5", "declined b 5")


# Typed errors -------------------------------------------------------------------------------------

Paying: plait.Workflow[Any, str] = plait.Workflow(
    "ActPaying", payload={"id": str}, success=str, error=CardDeclined
)


async def test_tagged_errors_round_trip_through_the_journal(plait_engine: plait.Engine) -> None:
    charges = 0
    seen: list[CardDeclined] = []

    def charge() -> str:
        nonlocal charges
        charges += 1
        raise CardDeclined(reason="insufficient funds", code=51, retryable=True)

    @Paying.implement
    async def paying(payload: Any, execution_id: str) -> str:
        try:
            await plait.Activity("Charge", execute=charge, success=str, error=CardDeclined)
        except CardDeclined as err:
            seen.append(err)
            await Gate
            raise CardDeclined(reason=f"workflow: {err.reason}", code=err.code + 1) from None
        return "unreachable"

    expected = CardDeclined(reason="insufficient funds", code=51, retryable=True)
    caller = asyncio.ensure_future(Paying.execute({"id": "p"}))
    execution_id = Paying.execution_id({"id": "p"})
    await poll_until(Paying, execution_id, plait.Suspended)
    await Gate.succeed(gate_token(Paying, execution_id), "go")
    with pytest.raises(CardDeclined) as err:
        await caller
    assert charges == 1
    assert len(seen) == 2  # the first run, then the replay from the journal
    for error in seen:
        assert type(error) is CardDeclined
        assert error.fields() == expected.fields()
    workflow_error = CardDeclined(reason="workflow: insufficient funds", code=52)
    assert type(err.value) is CardDeclined
    assert err.value.fields() == {
        "reason": "workflow: insufficient funds",
        "code": 52,
        "retryable": False,
    }
    result = await Paying.poll(execution_id)
    assert result == plait.Complete(plait.Failure(workflow_error))
    assert isinstance(result, plait.Complete)
    assert isinstance(result.exit, plait.Failure)
    assert type(result.exit.error) is CardDeclined


async def test_undeclared_exceptions_become_defects(plait_engine: plait.Engine) -> None:
    seen: list[plait.Defect] = []

    def broken() -> str:
        raise KeyError("missing")

    def decline() -> None:
        raise CardDeclined(reason="x", code=1)

    @Paying.implement
    async def paying(payload: Any, execution_id: str) -> str:
        try:
            # CardDeclined is not declared here: it becomes a Defect too.
            await plait.Activity("Broken", execute=broken, success=str)
        except plait.Defect as err:
            seen.append(err)
        try:
            await plait.Activity("Undeclared", execute=decline)
        except plait.Defect as err:
            seen.append(err)
        await Gate
        raise ZeroDivisionError("no money")

    caller = asyncio.ensure_future(Paying.execute({"id": "defects"}))
    execution_id = Paying.execution_id({"id": "defects"})
    await poll_until(Paying, execution_id, plait.Suspended)
    await Gate.succeed(gate_token(Paying, execution_id), "go")
    with pytest.raises(plait.Defect) as err:
        await caller
    assert (err.value.type_name, err.value.message) == ("ZeroDivisionError", "no money")
    assert "ZeroDivisionError" in err.value.traceback
    assert [(d.type_name, d.message) for d in seen] == [
        ("KeyError", "'missing'"),
        ("tests.test_activity.CardDeclined", "CardDeclined(reason='x', code=1, retryable=False)"),
    ] * 2
    assert all(type(d) is plait.Defect for d in seen)


# Decorators and threads -------------------------------------------------------------------------


@plait.activity
async def double(x: int) -> int:
    return x * 2


@plait.activity(name="Triple", success=int)
def triple(x: int) -> int:
    return x * 3


thread_ids: list[int] = []


@plait.activity()
def where_am_i() -> None:
    thread_ids.append(threading.get_ident())


Decorated: plait.Workflow[Any, list[int]] = plait.Workflow(
    "ActDecorated", payload={"x": int}, success=list[int]
)


async def test_activity_decorator_forms_and_sync_bodies_in_a_worker_thread(
    plait_engine: plait.Engine,
) -> None:
    thread_ids.clear()
    assert double.name == "double"
    assert triple.name == "Triple"
    assert where_am_i.name == "where_am_i"
    assert isinstance(double(1), plait.Activity)

    @Decorated.implement
    async def decorated(payload: Any, execution_id: str) -> list[int]:
        await where_am_i()
        return [await double(payload.x), await triple(payload.x)]

    assert await Decorated.execute({"x": 7}) == [14, 21]
    assert len(thread_ids) == 1
    assert thread_ids[0] != threading.get_ident()
    execution_id = Decorated.execution_id({"x": 7})
    assert await journal_keys(plait_engine, execution_id) == [
        "where_am_i/1",
        "double/1",
        "Triple/1",
    ]
