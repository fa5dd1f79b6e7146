"""Entity RPCs over HTTP, live: Effect's `EntityProxy` routes on uvicorn on a loopback port, an
engine on a real SQLite file or PostgreSQL, and `plait.Client` and `RecordingClient` calling them.

Each request's reply, error and status; bad input refused with its 4xx and nothing stored.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import plait
from plait.http import Client, RecordingClient, proxy_app
from plait.http.errors import (
    NotFoundError,
    ProxyUnavailableError,
    ResultNotSetError,
    UnauthorizedError,
)
from tests import http_entities as he
from tests.conftest import POSTGRES, psql
from tests.http_support import free_port, http_client, live_proxy


@dataclass
class Store:
    """The engine the proxy serves, and how to count the entity requests its database holds."""

    engine: plait.Engine
    stored: Callable[[], int]


# Counted by another process: two SQLite libraries in one process (Python's and the engine's)
# would share its POSIX locks, and one closing the file drops the other's.
_COUNT_SQLITE = """
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
tables = {row[0] for row in db.execute("select name from sqlite_master")}
found = "plait_messages" in tables
print(db.execute("select count(*) from plait_messages").fetchone()[0] if found else 0)
"""


def _sqlite_count(path: Path) -> Callable[[], int]:
    def count() -> int:
        if not path.exists():
            return 0
        out = subprocess.run(
            [sys.executable, "-c", _COUNT_SQLITE, str(path)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(out.stdout.strip())

    return count


def _postgres_count(database: str) -> Callable[[], int]:
    def count() -> int:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-qAtc",
             "select count(*) from plait_messages"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return int(out.stdout.strip()) if out.returncode == 0 else 0

    return count


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An engine (not started: the proxy starts it) on a fresh SQLite file or database."""
    he.runs.clear()
    he.gate_runs.clear()
    if request.param == "sqlite":
        path = tmp_path / "plait.db"
        yield Store(plait.Engine.sqlite(path), _sqlite_count(path))
        return
    name = f"plait_test_{uuid.uuid4().hex[:12]}"
    psql(f"create database {name}")
    try:
        yield Store(plait.Engine.postgres(f"{POSTGRES}/{name}"), _postgres_count(name))
    finally:
        psql(f"drop database if exists {name} with (force)")


@pytest_asyncio.fixture
async def proxy(store: Store) -> AsyncIterator[str]:
    """The proxy of the test entities (and a workflow), live; its base URL."""
    app = proxy_app([he.ProcessOrder], engine=store.engine, entities=[he.Counter, he.Gate])
    async with live_proxy(app) as url:
        yield url


def step(key: str, by: int) -> dict[str, Any]:
    return {"request_key": key, "by": by}


# Effect's routes -------------------------------------------------------------------------


async def test_a_persisted_rpc_is_stored_once_and_answered_once(proxy: str, store: Store) -> None:
    async with http_client(proxy) as http:
        first = await http.post("/httpcounter/increment/c-1", json=step("r1", 2))
        again = await http.post("/httpcounter/increment/c-1", json=step("r1", 2))
        other = await http.post("/httpcounter/increment/c-1", json=step("r2", 3))
        total = await http.post("/httpcounter/get/c-1")
    assert (first.status_code, first.headers["content-type"], first.json()) == (
        200,
        "application/json",
        2,
    )
    assert (again.status_code, again.json()) == (200, 2)  # the stored reply, not a second run
    assert other.json() == 5
    assert total.json() == 5
    assert he.runs == ["r1", "r2"]
    assert store.stored() == 2  # the volatile `get` is never stored


async def test_an_effect_httpapiclient_request_works_as_it_is(proxy: str, store: Store) -> None:
    # What Effect's HttpApiClient sends for `EntityProxy.toHttpApiGroup("counter", Counter)
    # .prefix("/httpcounter")`: the payload as JSON, the entity id in the path.
    headers = {"content-type": "application/json", "accept": "application/json"}
    body = b'{"request_key":"e1","by":7}'
    async with http_client(proxy) as http:
        called = await http.post("/httpcounter/increment/c-2", content=body, headers=headers)
        sent = await http.post(
            "/httpcounter/increment/c-2/discard",
            content=body.replace(b"e1", b"e2"),
            headers=headers,
        )
        assert (called.status_code, called.content) == (200, b"7")
        assert (sent.status_code, sent.content) == (204, b"")  # taken: stored, not yet run
        for _ in range(200):
            if (await http.post("/httpcounter/get/c-2")).json() == 14:
                break
            await asyncio.sleep(0.02)
        assert (await http.post("/httpcounter/get/c-2")).json() == 14
        # An RPC with no reply value: 200 and no body, as Effect's HttpApi answers a void.
        reset = await http.post("/httpcounter/reset/c-2", headers=headers)
        assert (reset.status_code, reset.content) == (200, b"")
        # A payload that is not an object: a plain int.
        assert (await http.post("/httpcounter/echo/c-2", json=41)).json() == 41
    assert he.runs == ["e1", "e2"]
    assert store.stored() == 2


async def test_errors_are_written_as_a_workflow_s(proxy: str, store: Store) -> None:
    async with http_client(proxy) as http:
        declared = await http.post("/httpcounter/increment/c-3", json=step("big", 5000))
        defect = await http.post("/httpcounter/increment/c-3", json=step("bug", 13))
    assert declared.status_code == 500
    assert declared.headers["plait-cause"] == "Fail"
    assert declared.json() == {"_tag": "TooBig", "by": 5000, "limit": 1000}
    assert defect.status_code == 500
    assert defect.headers["plait-cause"] == "Die"
    assert defect.json() == {
        "_tag": "Die",
        "defect": {"name": "RuntimeError", "message": "unlucky step"},
    }
    assert store.stored() == 2  # both were taken: their failures are their stored replies


async def test_a_full_mailbox_is_503_mailboxfull(proxy: str) -> None:
    key = uuid.uuid4().hex
    async with http_client(proxy) as http:
        holding = await http.post("/httpgate/wait/g-1/discard", json=key)
        assert holding.status_code == 204  # taken: it holds the instance's one slot
        full = await http.post("/httpgate/wait/g-1", json=key)
        assert full.status_code == 503
        assert full.json()["_tag"] == "MailboxFull"
        assert "HttpGate/g-1" in full.json()["message"]
        he.open_gate(key)
        for _ in range(200):
            answered = await http.post("/httpgate/wait/g-1", json=key)
            if answered.status_code == 200:
                break
            await asyncio.sleep(0.02)
    assert answered.json() == f"g-1:{key}"


async def test_a_stopping_server_gives_up_the_wait_not_the_request(store: Store) -> None:
    """The proxy stops while a persisted RPC runs: its wait's connection is cut, the request
    runs on (not interrupted), and the client's retry, served by the next proxy, gets its
    stored reply."""
    key = uuid.uuid4().hex
    port = free_port()
    app = proxy_app([], engine=store.engine, entities=[he.Gate])
    async with store.engine, Client(f"http://127.0.0.1:{port}") as client:  # outlive servers
        async with live_proxy(app, port=port, grace=1):
            waiting = asyncio.ensure_future(client.call(he.hold, "g-9", key))
            for _ in range(500):
                if key in he.gate_runs:
                    break
                await asyncio.sleep(0.01)
            assert he.gate_runs == [key]
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the client keeps trying
        async with live_proxy(app, port=port):
            he.open_gate(key)
            reply = await asyncio.wait_for(waiting, 20)
    # Not interrupted: it ran on, once, and answers the retry.
    assert reply == f"g-9:{key}"
    assert he.gate_runs == [key]
    assert store.stored() == 1


# Bad input -------------------------------------------------------------------------------

BIG = 1 << 20

BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (what, path, request kwargs, status, _tag)
    ("unknown entity", "/nocounter/increment/c", {"json": step("x", 1)}, 404, "NotFoundError"),
    ("unknown rpc", "/httpcounter/decrement/c", {"json": step("x", 1)}, 404, "NotFoundError"),
    ("no entity id", "/httpcounter/increment/", {"json": step("x", 1)}, 404, "NotFoundError"),
    (
        "invalid JSON",
        "/httpcounter/increment/c",
        {
            "content": b'{"request_key": "x", "by": ',
            "headers": {"content-type": "application/json"},
        },
        400,
        "MalformedRequestError",
    ),
    (
        "wrong type",
        "/httpcounter/increment/c",
        {"json": step("x", "many")},  # type: ignore[arg-type]
        422,
        "MalformedMessage",
    ),
    ("missing field", "/httpcounter/increment/c", {"json": {"by": 1}}, 422, "MalformedMessage"),
    ("no body", "/httpcounter/increment/c", {}, 422, "MalformedMessage"),
    ("a body for no payload", "/httpcounter/get/c", {"json": {}}, 422, "MalformedMessage"),
    ("not a str", "/httpgate/wait/g", {"json": ["k"]}, 422, "MalformedMessage"),
    (
        "not JSON",
        "/httpcounter/increment/c",
        {"content": b"by=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        "UnsupportedMediaTypeError",
    ),
    (
        "a NUL in the entity id",
        "/httpcounter/increment/c%00d",
        {"json": step("x", 1)},
        422,
        "InvalidRequestError",
    ),
    (
        "too large",
        "/httpcounter/increment/c",
        {"json": step("x" * BIG, 1)},
        413,
        "RequestTooLargeError",
    ),
    (
        "a primary key with a NUL",
        "/httpcounter/increment/c",
        {"json": step("a\u0000b", 1)},
        422,
        "MalformedMessage",
    ),
    (
        "a lone surrogate",
        "/httpcounter/increment/c",
        {
            "content": b'{"request_key": "\\ud800", "by": 1}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "MalformedMessage",
    ),
]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "tag"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_input_gets_its_typed_4xx_and_nothing_is_stored(
    proxy: str, store: Store, path: str, kwargs: dict[str, Any], status: int, tag: str
) -> None:
    async with http_client(proxy) as http:
        response = await http.post(path, **kwargs)
        discarded = await http.post(f"{path}/discard", **kwargs)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["_tag"] == tag
    assert problem["message"]
    if tag == "MalformedMessage":
        assert "RPC HttpCounter" in problem["message"] or "RPC HttpGate" in problem["message"]
        # A lone surrogate and a NUL in the primary key validate; they cannot be stored.
        if "cannot be" not in problem["message"]:
            assert problem["errors"], problem  # pydantic's details
    if path.startswith("/httpcounter/increment/c") and tag not in {"NotFoundError"}:
        assert discarded.status_code == status  # the same refusal without waiting
    assert he.runs == []
    assert store.stored() == 0


async def test_the_details_name_what_was_wrong(proxy: str) -> None:
    async with http_client(proxy) as http:
        response = await http.post("/httpcounter/increment/c", json={"request_key": 7})
    errors = response.json()["errors"]
    assert {(tuple(e["loc"]), e["type"]) for e in errors} == {
        (("request_key",), "string_type"),
        (("by",), "missing"),
    }


async def test_with_a_token_an_rpc_needs_it(store: Store) -> None:
    token = uuid.uuid4().hex
    app = proxy_app([], engine=store.engine, entities=[he.Counter], token=token)
    async with live_proxy(app) as url, http_client(url) as http:
        refused = await http.post("/httpcounter/increment/c", json=step("t", 1))
        malformed = await http.post(
            "/httpcounter/increment/c",
            json=step("t", 1),
            headers={"authorization": "Bearer"},
        )
        allowed = await http.post(
            "/httpcounter/increment/c",
            json=step("t", 1),
            headers={"authorization": f"Bearer {token}"},
        )
    assert (refused.status_code, refused.json()["_tag"]) == (401, "UnauthorizedError")
    assert malformed.status_code == 401
    assert (allowed.status_code, allowed.json()) == (200, 1)
    assert store.stored() == 1


# The schema and the listings -------------------------------------------------------------


async def test_openapi_lists_the_entity_routes_from_the_pydantic_models(proxy: str) -> None:
    async with http_client(proxy) as http:
        schema = (await http.get("/openapi.json")).json()
    paths = schema["paths"]
    for rpc in ("increment", "get", "reset", "echo"):
        assert f"/httpcounter/{rpc}/{{entity_id}}" in paths
        assert f"/httpcounter/{rpc}/{{entity_id}}/discard" in paths
    assert "/httpgate/wait/{entity_id}" in paths
    increment = paths["/httpcounter/increment/{entity_id}"]["post"]
    assert increment["operationId"] == "HttpCounter.increment"
    body = increment["requestBody"]["content"]["application/json"]["schema"]
    model = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(model["properties"]) == {"request_key", "by"}
    reply = increment["responses"]["200"]["content"]["application/json"]["schema"]
    assert reply["type"] == "integer"
    failure = increment["responses"]["500"]["content"]["application/json"]["schema"]
    refs = {ref["$ref"].rsplit("/", 1)[1] for ref in failure["anyOf"] if "$ref" in ref}
    assert {"TooBig", "DieCause", "InterruptCause", "Problem"} <= refs
    assert {"404", "409", "413", "415", "422", "503"} <= set(increment["responses"])
    discard = paths["/httpcounter/increment/{entity_id}/discard"]["post"]
    assert discard["operationId"] == "HttpCounter.incrementDiscard"
    assert "204" in discard["responses"]
    assert "/entities" in paths
    assert "/cluster" in paths


async def test_entities_and_the_cluster_on_a_single_engine(proxy: str) -> None:
    async with http_client(proxy) as http:
        await http.post("/httpcounter/get/c-1")
        await http.post("/httpcounter/get/c-2")
        entities = (await http.get("/entities")).json()
        cluster = (await http.get("/cluster")).json()
    assert [e["name"] for e in entities] == ["HttpCounter", "HttpGate"]
    increment = entities[0]["rpcs"][0]
    assert increment == {
        "name": "increment",
        "path": "/httpcounter/increment/{entity_id}",
        "persisted": True,
        "primaryKey": True,
        "payload": True,
    }
    assert cluster["cluster"] is False
    assert cluster["assignments"] == []
    assert cluster["entityTypes"] == {"HttpCounter": 2}
    assert cluster["entities"] == 2


def test_routes_that_would_overlap_are_refused() -> None:
    engine = plait.Engine.memory()
    clash = plait.Workflow("HttpCounter", payload={"n": int})
    with pytest.raises(plait.InvalidArgumentError, match="share the route /httpcounter"):
        proxy_app([clash], engine=engine, entities=[he.Counter])
    reserved = plait.Entity("Cluster")
    with pytest.raises(plait.InvalidArgumentError, match="proxy's own routes"):
        proxy_app([], engine=engine, entities=[reserved])
    with pytest.raises(plait.InvalidArgumentError, match="one of the two"):
        proxy_app([], entities=[he.Counter])
    with pytest.raises(plait.InvalidArgumentError, match=r"plait\.Entity objects"):
        proxy_app([], engine=engine, entities=[he.increment])  # type: ignore[list-item]


# The typed client ------------------------------------------------------------------------


async def test_the_client_calls_rpcs_typed_by_them(proxy: str, store: Store) -> None:
    async with Client(proxy) as client:
        total = await client.call(he.increment, "c-9", he.Increment(request_key="k1", by=4))
        assert total == 4
        assert await client.call(he.increment, "c-9", {"request_key": "k1", "by": 4}) == 4
        assert await client.call(he.get, "c-9") == 4
        assert await client.call(he.echo, "c-9", 12) == 12
        assert await client.call(he.reset, "c-9") is None  # type: ignore[func-returns-value]
        assert await client.call(he.get, "c-9") == 0
        assert await client.call(he.increment, "c-9", step("k2", 1), discard=True) is None
        with pytest.raises(he.TooBig) as declared:
            await client.call(he.increment, "c-9", step("k3", 2000))
        assert (declared.value.by, declared.value.limit) == (2000, 1000)
        with pytest.raises(plait.Defect, match="unlucky step"):
            await client.call(he.increment, "c-9", step("k4", 13))
        stored = store.stored()
        # Refused before anything is sent: no request reaches the proxy.
        with pytest.raises(plait.MalformedMessage) as malformed:
            await client.call(he.increment, "c-9", {"request_key": "k5"})
        assert malformed.value.errors[0]["loc"] == ("by",)
        with pytest.raises(plait.InvalidArgumentError, match="URL path segment"):
            await client.call(he.get, "a/b")
        assert store.stored() == stored
        listed = await client.entities()
        assert [e.name for e in listed] == ["HttpCounter", "HttpGate"]
        status = await client.cluster()
        assert status.cluster is False
        assert status.entity_types["HttpCounter"] == 1


async def test_the_client_raises_a_full_mailbox_as_mailboxfull(proxy: str) -> None:
    key = uuid.uuid4().hex
    async with Client(proxy) as client:
        assert await client.call(he.wait, "g-2", key, discard=True) is None
        with pytest.raises(plait.MailboxFull) as full:
            await client.call(he.wait, "g-2", key)  # volatile: not retried, raised
        assert (full.value.entity_type, full.value.entity_id) == ("HttpGate", "g-2")
        he.open_gate(key)


async def test_the_client_raises_the_proxy_s_refusals_as_their_class(store: Store) -> None:
    token = uuid.uuid4().hex
    app = proxy_app([], engine=store.engine, entities=[he.Counter], token=token)
    async with live_proxy(app) as url:
        async with Client(url) as client:
            with pytest.raises(UnauthorizedError):
                await client.call(he.get, "c")
        async with Client(url, token=token) as client:
            with pytest.raises(NotFoundError):
                await client.call(he.wait, "g", "k")  # HttpGate is not served there
    assert store.stored() == 0


async def test_the_client_retries_an_idempotent_rpc_until_the_proxy_is_up(
    store: Store,
) -> None:
    port = free_port()
    app = proxy_app([], engine=store.engine, entities=[he.Counter])
    async with Client(f"http://127.0.0.1:{port}") as client:
        call = asyncio.create_task(client.call(he.increment, "c-r", step("retry", 2)))
        await asyncio.sleep(0.3)  # a few refused connections first
        async with live_proxy(app, port=port):
            assert await call == 2
    # Not idempotent (volatile): sent again only while the connection is refused (it never
    # arrived), within the schedule; then the proxy is unavailable.
    async with Client(f"http://127.0.0.1:{port}", retry=None) as once:
        with pytest.raises(ProxyUnavailableError):
            await once.call(he.get, "c-r")
    assert he.runs == ["retry"]


# The recording client --------------------------------------------------------------------


async def test_the_recording_client_records_rpcs_and_answers_what_the_test_set() -> None:
    client = RecordingClient()
    client.set_reply(he.increment, 10)
    client.set_reply(he.increment, 99, entity_id="special")
    assert await client.call(he.increment, "c-1", step("a", 1)) == 10
    assert await client.call(he.increment, "special", step("b", 2)) == 99
    # No reply value: answered without one being set.
    assert await client.call(he.reset, "c-1") is None  # type: ignore[func-returns-value]
    assert await client.call(he.increment, "c-1", step("c", 3), discard=True) is None
    with pytest.raises(ResultNotSetError, match="set_reply"):
        await client.call(he.get, "c-1")
    client.set_reply_error(he.increment, he.TooBig(by=5, limit=1))
    with pytest.raises(he.TooBig):
        await client.call(he.increment, "c-1", step("d", 5))
    client.set_reply_error(he.get, ValueError("boom"))  # undeclared: a Defect, as over HTTP
    with pytest.raises(plait.Defect, match="boom"):
        await client.call(he.get, "c-1")
    client.set_reply_error(he.wait, plait.MailboxFull("HttpGate", "g", ""))
    with pytest.raises(plait.MailboxFull):
        await client.call(he.wait, "g", "k", discard=True)
    with pytest.raises(plait.MalformedMessage):
        await client.call(he.increment, "c-1", {"by": "x"})
    with pytest.raises(plait.InvalidArgumentError):
        client.set_reply(he.get, "not an int")  # type: ignore[misc]
    sent = client.sent(he.increment)
    assert [(c.name, c.entity_id, c.payload.request_key, c.discard) for c in sent] == [
        ("HttpCounter.increment", "c-1", "a", False),
        ("HttpCounter.increment", "special", "b", False),
        ("HttpCounter.increment", "c-1", "c", True),
        ("HttpCounter.increment", "c-1", "d", False),
    ]
    assert isinstance(sent[0].payload, he.Increment)
    assert len(client.sent()) == 8
    assert client.started() == []  # no workflow was
