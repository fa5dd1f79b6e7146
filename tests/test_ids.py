from __future__ import annotations

import base64
import hashlib
import json
import random

import pytest

import plait
from tests.vectors import EFFECT

RUN = EFFECT["execution_id"]
EXECUTION: str = RUN["execution_id"]
TOKEN: str = EFFECT["deferred_token"]["token"]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).digest()[:16].hex()


def json_stringify_base64url(*parts: str) -> str:
    """What Effect does: base64url(JSON.stringify(parts)) without padding."""
    text = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_effect_vectors() -> None:
    assert plait.execution_id(RUN["workflow"], RUN["idempotency_key"]) == EXECUTION
    parts = EFFECT["deferred_token"]
    token = plait.DeferredToken(parts["workflow"], parts["execution_id"], parts["deferred"])
    assert token.encode() == TOKEN
    assert plait.DeferredToken.parse(TOKEN) == token


def test_execution_ids_are_sha256_prefixes(rng: random.Random) -> None:
    for _ in range(500):
        name = "".join(rng.choice("abcXYZ-é😀") for _ in range(rng.randrange(1, 12)))
        key = "".join(rng.choice("0123456789:-/ ü") for _ in range(rng.randrange(0, 30)))
        assert plait.execution_id(name, key) == digest(f"{name}-{key}")


def test_execution_ids_batch() -> None:
    keys = [f"order-{n}" for n in range(1000)]
    assert plait.execution_ids("ProcessOrder", keys) == [
        plait.execution_id("ProcessOrder", k) for k in keys
    ]
    assert plait.execution_ids("ProcessOrder", []) == []
    with pytest.raises(TypeError):
        plait.execution_ids("ProcessOrder", ["a", 1])  # type: ignore[list-item]


def test_activity_keys() -> None:
    assert plait.activity_idempotency_key(EXECUTION, "ChargeCard") == digest(
        f"{EXECUTION}-ChargeCard"
    )
    assert plait.activity_idempotency_key(EXECUTION, "ChargeCard", attempt=2) == digest(
        f"{EXECUTION}-2-ChargeCard"
    )
    for attempt in (0, -1):
        with pytest.raises(plait.InvalidArgumentError, match=f"attempt {attempt}"):
            plait.activity_idempotency_key(EXECUTION, "ChargeCard", attempt=attempt)


def test_tokens_match_json_stringify(rng: random.Random) -> None:
    alphabet = 'aZ09"\\/\n\t\u0001\u001f\u007fé漢😀 '
    for _ in range(500):
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 16))) for _ in "abc"]
        token = plait.DeferredToken(*parts)
        encoded = token.encode()
        assert encoded == json_stringify_base64url(*parts)
        assert plait.DeferredToken.parse(encoded) == token


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not a token!", "not unpadded base64url"),
        (base64.urlsafe_b64encode(b"{").decode(), "not UTF-8 JSON"),
        (base64.urlsafe_b64encode(b'{"a":1}').decode(), "not a JSON array"),
        (base64.urlsafe_b64encode(b'["a","b"]').decode(), "three elements"),
        (base64.urlsafe_b64encode(b'["a","b",1]').decode(), "must be strings"),
        ("", "not UTF-8 JSON"),
    ],
)
def test_malformed_tokens_say_why(token: str, reason: str) -> None:
    with pytest.raises(plait.MalformedTokenError, match=reason) as caught:
        plait.DeferredToken.parse(token)
    assert isinstance(caught.value, plait.InvalidArgumentError)
    assert isinstance(caught.value, ValueError)


def test_padded_tokens_parse() -> None:
    assert plait.DeferredToken.parse(TOKEN + "==").deferred_name == "EmailTrigger"
