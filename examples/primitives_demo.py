"""A tour of plait's Rust-core primitives, as a chat backend would use them.

Run with `./dev demo`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import plait
from plait.sharding import HashRing, shard_ids
from plait.snowflake import Snowflake, SnowflakeGenerator
from plait.timers import TimerService, TimerWheel, wall_clock_ms


def ids() -> None:
    print("== Execution ids, activity keys and deferred tokens (Effect-compatible)")
    run = plait.execution_id("SendInviteEmail", "invite-42")
    again = plait.execution_id("SendInviteEmail", "invite-42")
    charge_key = plait.activity_idempotency_key(run, "ChargeCard")
    token = plait.DeferredToken("SendInviteEmail", run, "InviteAccepted").encode()
    print(f"execution id of SendInviteEmail/invite-42: {run}")
    print(f"  the same request again maps to:            {again}")
    print(f"idempotency key for its ChargeCard step:     {charge_key}")
    print(f"deferred token handed to a webhook:          {token[:40]}...")
    print(f"  parsed back: {plait.DeferredToken.parse(token)}")
    try:
        plait.DeferredToken.parse("not-a-token")
    except plait.MalformedTokenError as err:
        print(f"  a forged token is refused: {err}")


def sharding() -> None:
    print("\n== Entities to shards to runners")
    channels = [f"channel-{n}" for n in range(100_000)]
    started = time.perf_counter()
    shards = shard_ids(channels)
    elapsed = time.perf_counter() - started
    print(
        f"shards of 100,000 channel ids in one call: {elapsed * 1000:.1f} ms; "
        f"channel-7 lives on shard {shards[7]}"
    )
    ring = HashRing()
    for host in ("runner1:34431", "runner2:34431", "runner3:34431"):
        ring.add(host)
    before = ring.shards(300)
    assert before is not None
    print(f"300 shards over 3 runners: {dict(sorted(Counter(before).items()))}")
    ring.add("runner4:34431")
    after = ring.shards(300)
    assert after is not None
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    print(f"a 4th runner joins: {dict(sorted(Counter(after).items()))}; {moved} shards moved")
    print(f"channel-7's shard {shards[7]} is now served by {after[shards[7] - 1]}")


def snowflakes() -> None:
    print("\n== Snowflake ids")
    generator = SnowflakeGenerator(machine_id=7)
    started = time.perf_counter()
    batch = generator.next_ids(1_000_000)
    elapsed = time.perf_counter() - started
    first = Snowflake(batch[0])
    print(
        f"1,000,000 ids in one call: {elapsed * 1000:.1f} ms, strictly increasing: "
        f"{all(a < b for a, b in itertools.pairwise(batch))}"
    )
    print(
        f"first id {first}: made {first.timestamp.isoformat()} by machine {first.machine_id}, "
        f"sequence {first.sequence}"
    )


async def timers() -> None:
    print("\n== Timers")
    wheel = TimerWheel(now_ms=0)
    day_ms = 86_400_000
    started = time.perf_counter()
    wheel.insert_many((n, (n * 2_654_435_761) % (365 * day_ms) + 1) for n in range(1_000_000))
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    first_day = wheel.advance(day_ms)
    advanced = time.perf_counter() - started
    print(
        f"1,000,000 reminders spread over a year: inserted in {inserted * 1000:.0f} ms; "
        f"the first day's {len(first_day)} fire in {advanced * 1000:.1f} ms"
    )

    service = TimerService()
    now = wall_clock_ms()
    service.schedule_many([(1, now + 150), (2, now + 50), (3, now + 100)])
    fired: list[int] = []
    started = time.perf_counter()
    while len(fired) < 3:
        fired += await service.poll()
    print(
        f"TimerService woke the event loop for timers {fired} after "
        f"{(time.perf_counter() - started) * 1000:.0f} ms (due at 50, 100, 150 ms)"
    )


def main() -> None:
    print(f"plait {plait.__version__}\n")
    ids()
    sharding()
    snowflakes()
    asyncio.run(timers())


if __name__ == "__main__":
    main()
