from __future__ import annotations

import random
import string
from collections import Counter

import pytest

import plait
from plait.sharding import DEFAULT_SHARDS_PER_GROUP, HashRing, hash_string, shard_id, shard_ids
from tests import effect_reference as effect
from tests.vectors import EFFECT

HASH_VECTORS = [tuple(v) for v in EFFECT["hash_string"]]
SHARD_VECTORS = [tuple(v) for v in EFFECT["shard_id_of_300"]]
THREE: list[str] = EFFECT["ring"]["runners"]


def random_text(rng: random.Random) -> str:
    alphabet = string.printable + "éßжπ漢字😀🎉\u0000\uffff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


@pytest.mark.parametrize(("value", "expected"), HASH_VECTORS)
def test_hash_vectors(value: str, expected: int) -> None:
    assert hash_string(value) == expected


@pytest.mark.parametrize(("entity_id", "expected"), SHARD_VECTORS)
def test_shard_vectors(entity_id: str, expected: int) -> None:
    assert shard_id(entity_id) == expected
    assert shard_id(entity_id, shards_per_group=300) == expected


def test_hash_matches_the_reference_on_random_text(rng: random.Random) -> None:
    texts = [random_text(rng) for _ in range(3000)]
    for text in texts:
        assert hash_string(text) == effect.hash_string(text), repr(text)


def test_batch_equals_one_by_one(rng: random.Random) -> None:
    ids = [random_text(rng) for _ in range(2000)]
    for shards in (1, 7, 300, 4096):
        expected = [effect.shard_id(i, shards) for i in ids]
        assert shard_ids(ids, shards) == expected
        assert [shard_id(i, shards) for i in ids] == expected
    assert shard_ids(iter(ids[:10])) == [shard_id(i) for i in ids[:10]]
    assert shard_ids([]) == []


def test_default_is_effects_three_hundred() -> None:
    assert DEFAULT_SHARDS_PER_GROUP == 300
    shards = shard_ids([f"id-{n}" for n in range(5000)])
    assert min(shards) == 1
    assert max(shards) == 300


@pytest.mark.parametrize("count", [0, -1, -300, 2**32, 2**70])
def test_bad_shard_counts_are_named(count: int) -> None:
    with pytest.raises(plait.InvalidArgumentError, match=str(count)) as caught:
        shard_id("x", count)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, plait.PlaitError)
    with pytest.raises(plait.InvalidArgumentError, match=str(count)):
        shard_ids(["x"], count)


def test_batch_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        shard_ids(["a", 3])  # type: ignore[list-item]


def test_ring_vectors() -> None:
    ring = HashRing()
    for runner in THREE:
        ring.add(runner)
    owners = ring.shards(12)
    assert owners is not None
    assert [THREE.index(o) + 1 for o in owners] == EFFECT["ring"]["owners_of_12_shards"]
    assert Counter(ring.shards()) == dict.fromkeys(THREE, EFFECT["ring"]["shards_each_of_300"])
    weighted = HashRing()
    for runner, weight, _ in EFFECT["ring"]["weighted"]:
        weighted.add(runner, weight)
    assert Counter(weighted.shards(300)) == {r: n for r, _, n in EFFECT["ring"]["weighted"]}


def test_ring_matches_the_reference_through_joins_leaves_and_reweights(
    rng: random.Random,
) -> None:
    ring = HashRing()
    reference = effect.Ring()
    runners = [f"10.0.{n // 256}.{n % 256}:34431" for n in range(12)]
    for _ in range(60):
        runner = rng.choice(runners)
        if runner in ring and rng.random() < 0.4:
            ring.remove(runner)
            reference.remove(runner)
        else:
            weight = rng.choice([0.05, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0])
            ring.add(runner, weight)
            reference.add(runner, weight)
        assert len(ring) == len(reference.nodes)
        assert ring.runners == [(r, w) for r, w in reference.nodes.items()]
        for count in (1, 5, 12, 300):
            assert ring.shards(count) == reference.shards(count)
        key = random_text(rng)
        expected = (
            reference.ring[reference._index(effect.hash_string(key))[0]][1]
            if (reference.ring)
            else None
        )
        assert ring.get(key) == expected


def test_empty_ring() -> None:
    ring = HashRing()
    assert ring.shards() is None
    assert ring.get("x") is None
    assert len(ring) == 0
    assert "x:1" not in ring


def test_ring_bad_input() -> None:
    ring = HashRing()
    ring.add("a:1")
    with pytest.raises(plait.UnknownRunnerError, match="nobody:1"):
        ring.remove("nobody:1")
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(plait.InvalidArgumentError, match="weight"):
            ring.add("b:1", weight)
    assert ring.runners == [("a:1", 1.0)]
    with pytest.raises(plait.InvalidArgumentError, match="-5"):
        ring.shards(-5)
    with pytest.raises(plait.InvalidArgumentError, match="base weight"):
        HashRing(base_weight=0)
    assert issubclass(plait.UnknownRunnerError, plait.InvalidArgumentError)
