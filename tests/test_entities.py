"""Entities on one engine: typed RPCs, mailboxes, concurrency, passivation, errors.

Each test runs on the memory store, a SQLite file and PostgreSQL (volatile RPCs store nothing,
but run on every engine).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import plait
from plait.testing import EntityTestClient, VirtualClock
from tests.workflow_support import EngineFactory, settle


class Increment(BaseModel):
    by: int


class Overdrawn(plait.TaggedError):
    balance: int


class Purse(BaseModel):
    coins: int = 10


Counter = plait.Entity("EtCounter")
totals: dict[str, int] = {}
seen: list[tuple[str, str]] = []


@Counter.rpc()
async def increment(ctx: plait.EntityContext, req: Increment) -> int:
    seen.append((ctx.entity_id, "start"))
    await asyncio.sleep(0)
    totals[ctx.entity_id] = totals.get(ctx.entity_id, 0) + req.by
    seen.append((ctx.entity_id, "end"))
    return totals[ctx.entity_id]


@Counter.rpc()
async def get(ctx: plait.EntityContext) -> int:
    return totals.get(ctx.entity_id, 0)


@Counter.rpc(error=Overdrawn)
async def withdraw(ctx: plait.EntityContext, amount: int) -> int:
    balance = totals.get(ctx.entity_id, 0)
    if amount > balance:
        raise Overdrawn(balance=balance)
    totals[ctx.entity_id] = balance - amount
    return totals[ctx.entity_id]


@pytest.fixture(autouse=True)
def fresh_totals() -> None:
    totals.clear()
    seen.clear()


async def test_an_rpc_answers_through_the_client_and_typed_call(plait_engine: plait.Engine) -> None:
    client = Counter.client("c-1")
    assert await client.increment(Increment(by=2)) == 2
    assert await increment.call("c-1", Increment(by=3)) == 5
    assert await client.get() == 5
    assert await get.call("c-2", None) == 0


async def test_one_request_at_a_time_per_instance_in_arrival_order(
    plait_engine: plait.Engine,
) -> None:
    results = await asyncio.gather(*(increment.call("one", Increment(by=1)) for _ in range(20)))
    assert results == list(range(1, 21))
    # Never two requests of one instance interleaved.
    assert seen == [("one", "start"), ("one", "end")] * 20


async def test_instances_run_side_by_side(plait_engine: plait.Engine) -> None:
    await asyncio.gather(*(increment.call(f"e-{n}", Increment(by=n)) for n in range(50)))
    assert totals == {f"e-{n}": n for n in range(50)}
    starts = [entity for entity, what in seen[:50] if what == "start"]
    assert len(starts) == 50, "every instance started before any finished"


async def test_concurrency_lets_an_instance_run_more_at_once(plait_engine: plait.Engine) -> None:
    Wide = plait.Entity("EtWide", concurrency=3)
    running: list[int] = []
    most = [0]
    gate = asyncio.Event()

    @Wide.rpc()
    async def work(ctx: plait.EntityContext, n: int) -> int:
        running.append(n)
        most[0] = max(most[0], len(running))
        await gate.wait()
        running.remove(n)
        return n

    calls = asyncio.gather(*(work.call("w", n) for n in range(7)))
    await settle()
    assert most[0] == 3
    gate.set()
    assert await calls == list(range(7))


async def test_a_declared_error_comes_back_as_itself_and_a_defect_as_a_defect(
    plait_engine: plait.Engine,
) -> None:
    await increment.call("acct", Increment(by=10))
    with pytest.raises(Overdrawn) as overdrawn:
        await withdraw.call("acct", 11)
    assert overdrawn.value.balance == 10
    assert await withdraw.call("acct", 4) == 6
    assert await get.call("acct", None) == 6, "the instance goes on after a failed request"


async def test_an_invalid_payload_is_refused_before_it_is_sent(plait_engine: plait.Engine) -> None:
    with pytest.raises(plait.MalformedMessage) as refused:
        await increment.call("c", {"by": "many"})  # type: ignore[arg-type]
    assert isinstance(refused.value, plait.PlaitError)
    assert refused.value.errors[0]["loc"] == ("by",)
    with pytest.raises(plait.MalformedMessage, match="takes no payload"):
        await get.call("c", 3)  # type: ignore[call-overload]
    with pytest.raises(AttributeError, match="has no RPC 'nope'"):
        Counter.client("c").nope  # noqa: B018
    assert seen == [], "nothing ran"


async def test_a_full_mailbox_refuses_volatile_requests(plait_engine: plait.Engine) -> None:
    Narrow = plait.Entity("EtNarrow", mailbox_capacity=2)
    gate = asyncio.Event()

    @Narrow.rpc()
    async def hold(ctx: plait.EntityContext) -> str:
        await gate.wait()
        return "held"

    first = asyncio.ensure_future(hold.call("n", None))
    second = asyncio.ensure_future(hold.call("n", None))
    await settle()
    with pytest.raises(plait.MailboxFull) as full:
        await hold.call("n", None)
    assert (full.value.entity_type, full.value.entity_id) == ("EtNarrow", "n")
    gate.set()
    assert list(await asyncio.gather(first, second)) == ["held", "held"]
    assert await hold.call("n", None) == "held", "room again once they finished"


async def test_discard_returns_at_once_and_the_request_still_runs(
    plait_engine: plait.Engine,
) -> None:
    assert await increment.call("d", Increment(by=4), discard=True) is None
    await settle()
    assert totals["d"] == 4


async def test_an_idle_instance_is_passivated_and_made_again_with_fresh_state(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    class Tally(BaseModel):
        count: int = 0

    Idle = plait.Entity("EtIdle", state=Tally, max_idle_time=timedelta(seconds=30))

    @Idle.rpc()
    async def bump(ctx: plait.EntityContext[Tally]) -> int:
        ctx.state.count += 1
        return ctx.state.count

    assert await bump.call("i", None) == 1
    assert await bump.call("i", None) == 2
    source = plait_engine.work_source
    assert source.resident() == 1
    await plait_clock.advance(timedelta(seconds=29))
    await settle()
    assert source.resident() == 1
    await plait_clock.advance(timedelta(seconds=1))
    await settle()
    assert source.resident() == 0
    # Volatile state is the instance's memory: a new instance starts from the model's default.
    assert await bump.call("i", None) == 1


def test_entity_options_are_checked() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        plait.Entity("EtBad1", concurrency=0)
    with pytest.raises(ValueError, match="mailbox_capacity"):
        plait.Entity("EtBad2", mailbox_capacity=0)
    with pytest.raises(ValueError, match="primary_key= needs persisted=True"):
        plait.Entity("EtBad3").rpc(primary_key=lambda p: "k")

    def not_async(ctx: plait.EntityContext) -> int:
        return 1

    with pytest.raises(TypeError, match="async function"):
        plait.Entity("EtBad4").rpc(not_async)  # type: ignore[arg-type]


async def test_a_handler_defect_restarts_the_instance_and_runs_its_requests_again(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    class Seen(BaseModel):
        runs: int = 0

    Flaky = plait.Entity(
        "EtFlaky", state=Seen, defect_retry=plait.Schedule.spaced(timedelta(seconds=2))
    )
    attempts: list[int] = []

    @Flaky.rpc()
    async def unstable(ctx: plait.EntityContext[Seen]) -> int:
        ctx.state.runs += 1
        attempts.append(ctx.state.runs)
        if len(attempts) < 3:
            raise RuntimeError("boom")
        return ctx.state.runs

    caller = asyncio.ensure_future(unstable.call("f", None))
    await settle()
    assert attempts == [1]
    await plait_clock.advance(timedelta(seconds=2))
    await settle()
    assert attempts == [1, 1], "made again: its state starts over"
    await plait_clock.advance(timedelta(seconds=2))
    assert await caller == 1
    assert attempts == [1, 1, 1]


async def test_a_defect_restart_runs_the_requests_waiting_behind_it_too(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    Queue = plait.Entity("EtQueued", defect_retry=plait.Schedule.spaced(timedelta(seconds=1)))
    runs: list[int] = []

    @Queue.rpc()
    async def step(ctx: plait.EntityContext, n: int) -> int:
        runs.append(n)
        if n == 0 and runs.count(0) == 1:
            raise RuntimeError("boom")
        return n

    # One at a time: 1 and 2 wait in the mailbox while 0 dies; after the restart all three
    # run again in the order they came, and every caller gets its reply.
    callers = [asyncio.ensure_future(step.call("q", n)) for n in range(3)]
    await settle()
    assert runs == [0]
    await plait_clock.advance(timedelta(seconds=1))
    assert await asyncio.wait_for(asyncio.gather(*callers), 10) == [0, 1, 2]
    assert runs == [0, 0, 1, 2]


async def test_a_defect_is_the_reply_when_fatal_defects_are_disabled(
    plait_engine: plait.Engine,
) -> None:
    Tolerant = plait.Entity("EtTolerant", disable_fatal_defects=True)

    @Tolerant.rpc()
    async def crash(ctx: plait.EntityContext) -> None:
        raise RuntimeError("boom")

    @Tolerant.rpc()
    async def fine(ctx: plait.EntityContext) -> str:
        return "fine"

    with pytest.raises(plait.Defect, match="boom"):
        await crash.call("t", None)
    assert await fine.call("t", None) == "fine"


async def test_when_the_defect_retries_run_out_the_requests_fail_with_the_defect(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    Doomed = plait.Entity("EtDoomed", defect_retry=plait.Schedule.immediate(2))
    runs: list[str] = []

    @Doomed.rpc()
    async def never(ctx: plait.EntityContext) -> None:
        runs.append("run")
        raise RuntimeError("always")

    with pytest.raises(plait.Defect, match="always"):
        await never.call("d", None)
    assert runs == ["run"] * 3


def test_the_sharding_config_has_effects_defaults_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = plait.ShardingConfig()
    assert config.shards_per_group == 300
    assert config.entity_mailbox_capacity == 4_096
    assert config.max_resident_entities == 10_000
    assert config.entity_max_idle_time == timedelta(minutes=1)
    assert config.effective_refresh_interval == timedelta(seconds=10)
    assert str(config.runner_address) == "localhost:34431"
    monkeypatch.setenv("PLAIT_SHARDS_PER_GROUP", "1024")
    monkeypatch.setenv("PLAIT_ENTITY_MAILBOX_CAPACITY", "unbounded")
    monkeypatch.setenv("PLAIT_ENTITY_MAX_IDLE_TIME", "30")
    from_env = plait.ShardingConfig()
    assert from_env.shards_per_group == 1024
    assert from_env.entity_mailbox_capacity == "unbounded"
    assert from_env.entity_max_idle_time == timedelta(seconds=30)
    assert plait.ShardingConfig(shards_per_group=7).shards_per_group == 7, "code wins"
    monkeypatch.setenv("PLAIT_SHARDS_PER_GROUP", "zero")
    with pytest.raises(ValueError, match="shards_per_group"):
        plait.ShardingConfig()
    monkeypatch.delenv("PLAIT_SHARDS_PER_GROUP")
    with pytest.raises(ValueError, match="shard_lock_refresh_interval"):
        plait.ShardingConfig(
            shard_lock_refresh_interval=timedelta(seconds=40),
            shard_lock_expiration=timedelta(seconds=35),
        )
    with pytest.raises(ValueError, match="max_resident_entities"):
        plait.ShardingConfig(max_resident_entities=0)


async def test_the_runner_config_sets_the_defaults_of_entities_and_the_resident_cap() -> None:
    Small = plait.Entity("EtSmall")
    gate = asyncio.Event()

    @Small.rpc()
    async def hold(ctx: plait.EntityContext) -> None:
        await gate.wait()

    config = plait.ShardingConfig(entity_mailbox_capacity=1, max_resident_entities=2)
    async with plait.Engine.memory(sharding=config):
        calls = [asyncio.ensure_future(hold.call(f"s-{n}", None)) for n in range(2)]
        await settle()
        with pytest.raises(plait.MailboxFull):
            await hold.call("s-0", None)
        with pytest.raises(plait.MailboxFull):
            await hold.call("s-2", None)
        gate.set()
        await asyncio.gather(*calls)


async def test_the_sharding_helpers_answer_for_the_running_engine() -> None:
    from plait import sharding

    engine = plait.Engine.memory()
    assert sharding.shard_of("entity-1") == sharding.ShardId("default", 231)
    async with engine:
        assert sharding.has_shard_id(sharding.shard_of("anything"))
        assert not sharding.has_shard_id(sharding.ShardId("other-group", 1))
        assert not sharding.has_shard_id(sharding.ShardId("default", 301))
        first, second = sharding.snowflake(), sharding.snowflake()
        assert second > first
        assert not sharding.is_shutdown()
    assert sharding.is_shutdown(engine=engine)


async def test_a_caller_that_gives_up_interrupts_its_request(plait_engine: plait.Engine) -> None:
    Slow = plait.Entity("EtSlow")
    events: list[str] = []
    gate = asyncio.Event()

    @Slow.rpc()
    async def wait_for_gate(ctx: plait.EntityContext, n: int) -> int:
        events.append(f"start {n}")
        try:
            await gate.wait()
        except asyncio.CancelledError:
            events.append(f"interrupted {n}")
            raise
        events.append(f"end {n}")
        return n

    running = asyncio.ensure_future(wait_for_gate.call("s", 1))
    waiting = asyncio.ensure_future(wait_for_gate.call("s", 2))
    third = asyncio.ensure_future(wait_for_gate.call("s", 3))
    await settle()
    assert events == ["start 1"]
    waiting.cancel()  # dropped from the mailbox before it ran
    running.cancel()  # its handler is cancelled
    await settle()
    assert events == ["start 1", "interrupted 1", "start 3"]
    gate.set()
    assert await third == 3
    assert events[-1] == "end 3"


async def test_discard_of_a_refused_request_raises(plait_engine: plait.Engine) -> None:
    Tiny = plait.Entity("EtTiny", mailbox_capacity=1)
    gate = asyncio.Event()

    @Tiny.rpc()
    async def hold(ctx: plait.EntityContext) -> None:
        await gate.wait()

    await hold.call("t", None, discard=True)
    with pytest.raises(plait.MailboxFull):
        await hold.call("t", None, discard=True)
    gate.set()


async def test_a_streaming_rpc_yields_its_chunks_as_the_reader_takes_them(
    plait_engine: plait.Engine,
) -> None:
    Feed = plait.Entity("EtFeed")
    produced: list[int] = []

    @Feed.rpc()
    async def count(ctx: plait.EntityContext, upto: int) -> AsyncIterator[int]:
        for n in range(upto):
            produced.append(n)
            yield n

    @Feed.rpc()
    async def after(ctx: plait.EntityContext) -> str:
        return "after"

    chunks = count.stream("f", 3)
    assert [chunk async for chunk in chunks] == [0, 1, 2]
    # One chunk ahead of the reader at most.
    reader = count.stream("f", 100)
    assert await anext(reader) == 0
    await settle()
    assert len(produced) == 3 + 2
    # Leaving early interrupts it, and the instance takes the next request.
    await reader.aclose()  # type: ignore[attr-defined]
    assert await after.call("f", None) == "after"
    assert len(produced) == 3 + 2


async def test_a_stream_that_fails_raises_to_its_reader(plait_engine: plait.Engine) -> None:
    Broken = plait.Entity("EtBroken", disable_fatal_defects=True)

    @Broken.rpc(error=Overdrawn)
    async def partial(ctx: plait.EntityContext, upto: int) -> AsyncIterator[int]:
        yield 1
        raise Overdrawn(balance=upto)

    reader = partial.stream("b", 7)
    assert await anext(reader) == 1
    with pytest.raises(Overdrawn) as failed:
        await anext(reader)
    assert failed.value.balance == 7


async def test_the_test_client_runs_handlers_in_process_without_an_engine(
    plait_entity_client: Callable[[plait.Entity[Any], str], EntityTestClient],
) -> None:
    Wallet = plait.Entity("EtWallet", state=Purse)

    @Wallet.rpc(error=Overdrawn)
    async def spend(ctx: plait.EntityContext[Purse], amount: int) -> int:
        if amount > ctx.state.coins:
            raise Overdrawn(balance=ctx.state.coins)
        ctx.state.coins -= amount
        return ctx.state.coins

    @Wallet.rpc()
    async def crash(ctx: plait.EntityContext[Purse]) -> None:
        raise RuntimeError("boom")

    client = plait_entity_client(Wallet, "w")
    assert await client.spend(3) == 7
    # Another client of the same id shares the instance and its state.
    assert await plait_entity_client(Wallet, "w").spend(2) == 5
    assert await plait_entity_client(Wallet, "other").spend(1) == 9
    with pytest.raises(Overdrawn) as failed:
        await client.spend(50)
    assert failed.value.balance == 5
    with pytest.raises(plait.Defect, match="boom"):
        await client.crash()
    with pytest.raises(plait.MalformedMessage):
        await client.spend("lots")
    assert client.state == Purse(coins=5)


async def test_closing_lets_running_handlers_finish_within_the_termination_timeout(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> None:
    Slowpoke = plait.Entity("EtSlowpoke")
    finished: list[str] = []

    @Slowpoke.rpc()
    async def work(ctx: plait.EntityContext, seconds: float) -> str:
        await asyncio.sleep(seconds)
        finished.append(ctx.entity_id)
        return ctx.entity_id

    engine = make_engine(plait_clock)
    engine.sharding = plait.ShardingConfig(entity_termination_timeout=timedelta(seconds=0.5))
    async with engine:
        quick = asyncio.ensure_future(work.call("quick", 0.05))
        stuck = asyncio.ensure_future(work.call("stuck", 60))
        await settle()
    # The quick one finished during the close; the stuck one was cancelled after the timeout.
    assert await quick == "quick"
    with pytest.raises(plait.EngineClosedError):
        await stuck
    assert finished == ["quick"]
