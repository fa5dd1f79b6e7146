"""Hostile and careless input: a typed error naming the problem, never a crash or a hang."""

from __future__ import annotations

import json

import pytest

import plait
from plait.sharding import HashRing, hash_string, shard_id, shard_ids
from plait.snowflake import SnowflakeGenerator
from plait.timers import TimerService, TimerWheel
from tests import effect_reference
from tests.child import run_python

# Each case would ask Rust for an absurd allocation if sizes were trusted; run in a child so a
# regression (an abort) fails this test instead of killing the test run.
OVERSIZED = """
import json
import plait
from plait.sharding import HashRing, shard_ids
from plait.snowflake import SnowflakeGenerator
from plait.timers import TimerWheel
cases = {
    "heavy runner": lambda: HashRing().add("a:1", 1e9),
    "astronomic weight": lambda: HashRing().add("a:1", 1e30),
    "huge base weight": lambda: HashRing(2**32 - 1).add("a:1", 1000.0),
    "huge shard table": lambda: HashRing().shards(2**32 - 1),
    "endless ids": lambda: SnowflakeGenerator(1).next_ids(2**40),
    "lying len, shards": lambda: shard_ids(range(2**40)),
    "lying len, timers": lambda: TimerWheel(0).insert_many(range(2**40)),
    "lying len, keys": lambda: plait.execution_ids("W", range(2**62)),
}
outcomes = {}
for name, case in cases.items():
    try:
        case()
        outcomes[name] = ["accepted", ""]
    except Exception as err:
        outcomes[name] = [type(err).__name__, str(err)]
print(json.dumps(outcomes))
"""


def test_oversized_requests_are_refused_not_fatal() -> None:
    done = run_python("-c", OVERSIZED, timeout=120)
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    for name in ("heavy runner", "astronomic weight", "huge base weight"):
        assert outcomes[name][0] == "InvalidArgumentError", outcomes[name]
        assert "virtual nodes" in outcomes[name][1]
    assert outcomes["huge shard table"] == [
        "InvalidArgumentError",
        "shards per group must be an integer from 1 to 1048576, got 4294967295",
    ]
    assert outcomes["endless ids"] == [
        "InvalidArgumentError",
        "1099511627776 ids asked for in one call; at most 1048576 per call",
    ]
    assert outcomes["lying len, shards"][0] == "TypeError"
    assert outcomes["lying len, shards"][1].startswith("entity_ids[0]")
    assert outcomes["lying len, timers"][0] == "TypeError"
    assert outcomes["lying len, timers"][1].startswith("timers[0]")
    assert outcomes["lying len, keys"][0] == "TypeError"
    assert outcomes["lying len, keys"][1].startswith("idempotency_keys[0]")


def test_huge_ints_are_described_not_printed() -> None:
    with pytest.raises(plait.InvalidArgumentError, match="an integer of 16610 bits"):
        shard_id("x", 10**5000)


def test_bools_are_not_counts() -> None:
    with pytest.raises(TypeError, match="bool"):
        shard_id("x", True)
    with pytest.raises(TypeError, match="bool"):
        SnowflakeGenerator(True)


def test_a_single_str_is_not_a_batch() -> None:
    with pytest.raises(TypeError, match="not a single str"):
        shard_ids("abc")
    with pytest.raises(TypeError, match="not a single str"):
        plait.execution_ids("W", "abc")


def test_batch_errors_name_the_item() -> None:
    with pytest.raises(TypeError, match=r"entity_ids\[2\]"):
        shard_ids(["a", "b", None])  # type: ignore[list-item]
    with pytest.raises(plait.InvalidArgumentError, match=r"timers\[1\]"):
        TimerWheel(0).insert_many([(1, 2), (3,)])  # type: ignore[list-item]
    with pytest.raises(plait.InvalidArgumentError, match=r"timers\[1\]: -5 is out of range"):
        TimerWheel(0).insert_many([(1, 2), (3, -5)])


def test_lone_surrogates_route_like_javascript_strings() -> None:
    for text in ["\ud800", "a\udfffb", "😀\ud83d"]:
        assert hash_string(text) == effect_reference.hash_string(text)
        assert shard_id(text) == effect_reference.shard_id(text)
    assert shard_ids(["ok", "\ud800"]) == [shard_id("ok"), shard_id("\ud800")]


def test_lone_surrogates_in_names_are_refused() -> None:
    with pytest.raises(plait.InvalidArgumentError, match="lone surrogate"):
        plait.execution_id("Send\ud800", "k")
    with pytest.raises(plait.InvalidArgumentError, match=r"idempotency_keys\[1\].*lone surrogate"):
        plait.execution_ids("Send", ["ok", "\udc00"])
    with pytest.raises(plait.InvalidArgumentError, match="lone surrogate"):
        plait.DeferredToken("W", "e", "\ud800").encode()
    with pytest.raises(plait.InvalidArgumentError, match="lone surrogate"):
        HashRing().add("\ud800:1")


def test_membership_of_anything_is_a_plain_answer() -> None:
    wheel = TimerWheel(0)
    wheel.insert(1, 10)
    assert 1 in wheel
    assert -1 not in wheel
    assert "1" not in wheel
    assert 2**70 not in wheel
    ring = HashRing()
    ring.add("a:1")
    assert "a:1" in ring
    assert 3 not in ring
    assert "\ud800" not in ring


async def test_poll_refuses_an_empty_batch_at_once() -> None:
    timers = TimerService()
    for bad in (0, -1):
        with pytest.raises(
            plait.InvalidArgumentError, match=f"max_timers must be at least 1, got {bad}"
        ):
            await timers.poll(max_timers=bad)
