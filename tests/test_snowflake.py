from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

import plait
from plait.snowflake import Snowflake, SnowflakeGenerator, SnowflakeParts
from plait.timers import wall_clock_ms
from tests.vectors import EFFECT

JUNE_1_NOON = datetime(2025, 6, 1, 12, tzinfo=UTC)


def test_effect_vector() -> None:
    v = EFFECT["snowflake"]
    assert v["timestamp_ms"] == int(JUNE_1_NOON.timestamp() * 1000)
    s = Snowflake.make(JUNE_1_NOON, machine_id=v["machine_id"], sequence=v["sequence"])
    assert s == v["snowflake"]
    assert s.parts == SnowflakeParts(v["timestamp_ms"], v["machine_id"], v["sequence"])
    assert (s.machine_id, s.sequence, s.timestamp) == (7, 42, JUNE_1_NOON)


def test_make_accepts_ms_and_any_timezone() -> None:
    ms = int(JUNE_1_NOON.timestamp() * 1000)
    assert Snowflake.make(ms, 7, 42) == 54901761638428714
    plus_two = JUNE_1_NOON.astimezone(timezone(timedelta(hours=2)))
    assert Snowflake.make(plus_two, 7, 42) == 54901761638428714


def test_extremes() -> None:
    assert Snowflake.make(plait.snowflake.EPOCH, 0, 0) == 0
    top = Snowflake(2**64 - 1)
    assert (top.machine_id, top.sequence) == (1023, 4095)
    assert top.timestamp_ms == 1735689600000 + 2**42 - 1


@pytest.mark.parametrize(
    ("timestamp", "machine_id", "sequence", "named"),
    [
        (JUNE_1_NOON, 1024, 0, "machine id 1024"),
        (JUNE_1_NOON, -1, 0, "machine id -1"),
        (JUNE_1_NOON, 2**70, 0, str(2**70)),
        (JUNE_1_NOON, 0, 4096, "sequence 4096"),
        (datetime(2024, 12, 31, 23, 59, tzinfo=UTC), 0, 0, "1735689540000"),
        (1735689600000 + 2**42, 0, 0, str(1735689600000 + 2**42)),
    ],
)
def test_out_of_range_parts_are_named(
    timestamp: datetime | int, machine_id: int, sequence: int, named: str
) -> None:
    with pytest.raises(plait.InvalidArgumentError, match=named):
        Snowflake.make(timestamp, machine_id, sequence)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(plait.InvalidArgumentError, match="naive"):
        Snowflake.make(datetime(2025, 6, 1, 12), 7, 42)


def test_not_a_snowflake() -> None:
    with pytest.raises(plait.InvalidArgumentError, match="-5"):
        Snowflake(-5).parts  # noqa: B018


def test_generator_ids_increase_and_carry_the_machine() -> None:
    generator = SnowflakeGenerator(machine_id=513)
    before = wall_clock_ms()
    one_by_one = [generator.next_id() for _ in range(10_000)]
    middle = wall_clock_ms()
    ids = one_by_one + generator.next_ids(100_000)
    after = wall_clock_ms()
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    parts = [Snowflake(i).parts for i in (ids[0], ids[-1])]
    assert all(p.machine_id == 513 for p in parts)
    assert before <= parts[0].timestamp_ms
    # Ids run ahead of the clock only by the sequence space they need (4,096 a millisecond):
    # the 10,000 one by one by at most 3 ms, and the batch of 100,000 goes on from where they
    # ended, now or later, for at most 25 ms more. (Measuring the batch's run from `before` made
    # the test fail whenever the one-by-one ids took long enough on a loaded machine.)
    assert parts[1].timestamp_ms <= max(after, max(middle, before + 3) + 25) + 1


def test_machine_id_can_be_set_later() -> None:
    generator = SnowflakeGenerator(0)
    generator.machine_id = 1023
    assert generator.machine_id == 1023
    assert Snowflake(generator.next_id()).machine_id == 1023
    with pytest.raises(plait.InvalidArgumentError, match="1024"):
        generator.machine_id = 1024
    assert generator.machine_id == 1023


@pytest.mark.parametrize("machine_id", [1024, -1, 5000])
def test_generator_rejects_bad_machine_ids(machine_id: int) -> None:
    with pytest.raises(plait.InvalidArgumentError, match=str(machine_id)):
        SnowflakeGenerator(machine_id)


def test_next_ids_rejects_negative_counts() -> None:
    with pytest.raises(plait.InvalidArgumentError, match="-1"):
        SnowflakeGenerator(0).next_ids(-1)
