"""Persisted entity requests: saved before delivery, answered once, across restarts.

Each test runs on the memory store, a SQLite file and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

import plait
from plait._native import Op
from plait.testing import VirtualClock
from tests.workflow_support import EngineFactory, settle


class Deposit(BaseModel):
    request_key: str
    amount: int


class Balance(BaseModel):
    total: int = 0
    deposits: int = 0


Account = plait.Entity("EmAccount", state=Balance)
runs: list[str] = []


class Gate:
    """What slow handlers wait on: a new event per test (an event binds to one loop)."""

    event = asyncio.Event()


@Account.rpc(persisted=True, primary_key=lambda req: req.request_key)
async def deposit(ctx: plait.EntityContext[Balance], req: Deposit) -> int:
    runs.append(req.request_key)
    ctx.state.total += req.amount
    ctx.state.deposits += 1
    return ctx.state.total


@Account.rpc(persisted=True, primary_key=lambda req: req.request_key)
async def slow_deposit(ctx: plait.EntityContext[Balance], req: Deposit) -> int:
    runs.append(req.request_key)
    await Gate.event.wait()
    ctx.state.total += req.amount
    return ctx.state.total


@Account.rpc()
async def balance(ctx: plait.EntityContext[Balance]) -> int:
    return ctx.state.total


@pytest.fixture(autouse=True)
def fresh() -> None:
    runs.clear()
    Gate.event = asyncio.Event()


def now_plus(clock: VirtualClock, seconds: float) -> datetime:
    return datetime.fromtimestamp(clock.now_ms() / 1000 + seconds, UTC)


async def test_a_persisted_rpc_answers_once_per_key(plait_engine: plait.Engine) -> None:
    assert await deposit.call("a", Deposit(request_key="k1", amount=5)) == 5
    assert await deposit.call("a", Deposit(request_key="k2", amount=2)) == 7
    # The same key again: the stored reply, without running the handler.
    assert await deposit.call("a", Deposit(request_key="k1", amount=5)) == 5
    assert runs == ["k1", "k2"]
    assert await Account.client("a").balance() == 7


async def test_concurrent_duplicates_share_the_first_reply(plait_engine: plait.Engine) -> None:
    same = Deposit(request_key="once", amount=3)
    results = await asyncio.gather(*(deposit.call("b", same) for _ in range(5)))
    assert results == [3] * 5
    assert runs == ["once"]


async def test_discard_resolves_once_stored_and_the_request_still_runs(
    plait_engine: plait.Engine,
) -> None:
    assert await deposit.call("c", Deposit(request_key="d1", amount=4), discard=True) is None
    await settle()
    assert runs == ["d1"]
    assert await Account.client("c").balance() == 4


async def test_requests_in_flight_are_delivered_again_after_a_restart(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> None:
    first = make_engine(plait_clock)
    # Stopped at once, as by a crash: no time for the handlers to finish.
    first.sharding = plait.ShardingConfig(entity_termination_timeout=timedelta(milliseconds=1))
    async with first:
        calls = [
            asyncio.ensure_future(slow_deposit.call("r", Deposit(request_key=f"s{n}", amount=1)))
            for n in range(3)
        ]
        await settle()
        assert runs == ["s0"]  # one at a time; the others wait in the mailbox
    for call in calls:
        with pytest.raises(plait.PlaitError):
            await call
    runs.clear()
    Gate.event.set()
    second = make_engine.reopen(first, plait_clock)
    async with second:
        # Delivered again by the new engine: every one, each once, in order.
        for _ in range(100):
            await settle()
            if len(runs) == 3:
                break
        assert runs == ["s0", "s1", "s2"]
        # A caller that comes back with the same key gets the stored reply.
        again = await slow_deposit.call("r", Deposit(request_key="s2", amount=1))
        assert again == 3
        assert runs == ["s0", "s1", "s2"]


async def test_entity_state_is_stored_with_the_reply_and_loaded_on_activation(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> None:
    first = make_engine(plait_clock)
    async with first:
        for n in range(3):
            await deposit.call("s", Deposit(request_key=f"st{n}", amount=10))
    second = make_engine.reopen(first, plait_clock)
    async with second:
        assert await Account.client("s").balance() == 30
        assert await deposit.call("s", Deposit(request_key="st3", amount=1)) == 31
        # A key from before the restart: its stored reply, the state unchanged.
        assert await deposit.call("s", Deposit(request_key="st0", amount=10)) == 10
        assert await Account.client("s").balance() == 31


async def test_deliver_at_holds_a_request_back_until_then(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    later = deposit.call(
        "t", Deposit(request_key="late", amount=1), deliver_at=now_plus(plait_clock, 30)
    )
    await settle()
    assert runs == []
    await plait_clock.advance(timedelta(seconds=29))
    await settle()
    assert runs == []
    await plait_clock.advance(timedelta(seconds=1))
    assert await later == 1
    assert runs == ["late"]


async def test_deliver_at_needs_a_persisted_rpc_and_a_time_zone(
    plait_engine: plait.Engine,
) -> None:
    with pytest.raises(plait.InvalidArgumentError, match="persisted"):
        await balance.call("x", None, deliver_at=datetime.now(UTC))
    with pytest.raises(plait.InvalidArgumentError, match="timezone"):
        await deposit.call(
            "x", Deposit(request_key="naive", amount=1), deliver_at=datetime(2030, 1, 1)
        )


async def test_a_caller_that_gives_up_interrupts_and_the_interrupt_is_the_stored_reply(
    plait_engine: plait.Engine,
) -> None:
    call = asyncio.ensure_future(slow_deposit.call("i", Deposit(request_key="gone", amount=1)))
    await settle()
    assert runs == ["gone"]
    call.cancel()
    await settle()
    # The instance is free again, and the key answers with the interrupt.
    assert await deposit.call("i", Deposit(request_key="next", amount=2)) == 2
    with pytest.raises(plait.Interrupted):
        await slow_deposit.call("i", Deposit(request_key="gone", amount=1))
    assert runs == ["gone", "next"]


async def test_a_full_mailbox_keeps_persisted_requests_in_storage(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> None:
    Narrow = plait.Entity("EmNarrow", mailbox_capacity=1)
    order: list[int] = []

    @Narrow.rpc(persisted=True)
    async def record(ctx: plait.EntityContext, n: int) -> int:
        await asyncio.sleep(0)
        order.append(n)
        return n

    async with make_engine(plait_clock):
        # Volatile requests would get MailboxFull; persisted ones wait their turn in storage.
        results = await asyncio.gather(*(record.call("n", n) for n in range(5)))
    assert results == list(range(5))
    assert sorted(order) == list(range(5))


async def test_a_request_for_an_unregistered_type_gets_a_defect_after_the_timeout(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> None:
    config = plait.ShardingConfig(entity_registration_timeout=timedelta(seconds=5))
    engine = make_engine(plait_clock)
    engine.sharding = config
    async with engine:
        assert engine.journal is not None
        saved = await engine.journal.write(
            Op.request(77, "default:1", "EmNobody", "z", "poke", b"null", None, None, None)
        )
        assert saved is None
        # Saved by someone else: the next storage read finds it (here at once).
        engine.work_source.poll_storage()
        await settle()
        await plait_clock.advance(timedelta(seconds=4))
        await settle()
        assert await _replies(engine, [77]) == [None]
        # The timeout counts from the read that first found the request, which runs on the
        # core's threads and may have seen the clock at 4 s: 10 s is past it either way.
        await plait_clock.advance(timedelta(seconds=6))
        deadline = time.monotonic() + 10
        while True:
            await settle()
            replies = await _replies(engine, [77])
            if replies[0] is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert replies[0] is not None
        assert b'"Die"' in replies[0]
        assert b"EmNobody" in replies[0]


async def _replies(engine: plait.Engine, ids: list[int]) -> list[bytes | None]:
    from plait import _bridge

    assert engine.journal is not None
    store = engine.journal.store
    if store.immediate:
        return store.replies_now(ids)
    found: list[bytes | None] = await _bridge.call(lambda bridge: store.replies(bridge, ids))
    return found


async def test_state_that_no_longer_decodes_is_a_typed_defect(
    plait_engine: plait.Engine,
) -> None:
    assert plait_engine.journal is not None
    await plait_engine.journal.write(Op.entity_state("EmAccount", "bad", b'{"total": "many"}'))
    with pytest.raises(plait.Defect, match="does not match Balance"):
        await Account.client("bad").balance()
