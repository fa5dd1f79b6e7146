"""plait against JavaScript itself: node runs the hash from Effect's source (its
`Hash.string`) and the real `JSON.stringify`, on the same random strings."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

import plait
from plait.sharding import hash_string, shard_ids

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

ORACLE = r"""
const hashOptimize = (n) => (n & 0xbfffffff) | ((n >>> 1) & 0x40000000)
const hashString = (str) => { let h = 5381, i = str.length
  while (i) { h = (h * 33) ^ str.charCodeAt(--i) } return hashOptimize(h) }
const input = JSON.parse(require("fs").readFileSync(0, "utf8"))
const token = (parts) => Buffer.from(JSON.stringify(parts), "utf8").toString("base64url")
console.log(JSON.stringify({
  hashes: input.strings.map(hashString),
  shards: input.strings.map((s) => Math.abs(hashString(s) % 300) + 1),
  tokens: input.triples.map(token),
}))
"""


def random_string(rng: random.Random, surrogates: bool) -> str:
    pool = [
        "a",
        "Z",
        "0",
        "-",
        ":",
        '"',
        "\\",
        "\n",
        "\u0001",
        "\u007f",
        "é",
        "漢",
        "😀",
        "\u2028",
        "\ufeff",
        "\uffff",
    ]
    if surrogates:
        pool += ["\ud800", "\udbff", "\udc00", "\udfff"]
    return "".join(rng.choice(pool) for _ in range(rng.randrange(0, 24)))


def run_node(payload: dict[str, object]) -> dict[str, list[object]]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", ORACLE],
        input=json.dumps(payload),  # ensure_ascii keeps lone surrogates as \ud800 escapes
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


def test_hashes_shards_and_tokens_match_javascript(rng: random.Random) -> None:
    strings = [random_string(rng, surrogates=True) for _ in range(3000)]
    triples = [[random_string(rng, surrogates=False) for _ in range(3)] for _ in range(2000)]
    js = run_node({"strings": strings, "triples": triples})
    assert [hash_string(s) for s in strings] == js["hashes"]
    assert shard_ids(strings) == js["shards"]
    assert [plait.DeferredToken(*t).encode() for t in triples] == js["tokens"]
