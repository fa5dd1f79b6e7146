"""The HTTP proxy, live: uvicorn on a loopback port, an engine on a real SQLite file or PostgreSQL.

Every route, Effect's request and response shapes, and bad input: each refused with its 4xx
and nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

import plait
from plait.http import proxy_app
from tests import http_workflows as wf
from tests.conftest import POSTGRES, psql
from tests.http_support import http_client, live_proxy
from tests.workflow_support import deferred_names, poll_until, stored_count

ORDER = {"order_id": "o-1", "email": "a@example.org", "amount_cents": 4999}
WORKFLOWS: list[plait.Workflow[Any, Any]] = [
    wf.ProcessOrder,
    wf.MessageNotificationWorkflow,
    wf.Hold,
]


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[plait.Engine]:
    """An engine (not started: the proxy starts it) on a fresh SQLite file or database."""
    if request.param == "sqlite":
        yield plait.Engine.sqlite(tmp_path / "plait.db")
        return
    name = f"plait_test_{uuid.uuid4().hex[:12]}"
    psql(f"create database {name}")
    try:
        yield plait.Engine.postgres(f"{POSTGRES}/{name}")
    finally:
        psql(f"drop database if exists {name} with (force)")


@pytest_asyncio.fixture
async def proxy(engine: plait.Engine) -> AsyncIterator[str]:
    """The proxy of the test workflows, live; its base URL."""
    app = proxy_app(WORKFLOWS, engine=engine, deferreds=[wf.Approval])
    async with live_proxy(app) as url:
        yield url


# Effect's routes -------------------------------------------------------------------------


async def test_execute_answers_the_result_and_joins_the_same_execution(
    proxy: str, engine: plait.Engine
) -> None:
    async with http_client(proxy) as http:
        first = await http.post("/httpprocessorder", json=ORDER)
        again = await http.post("/httpprocessorder", json=ORDER)
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"charge_id": "ch_o-1", "amount_cents": 4999, "approved_by": None}
    execution_id = wf.ProcessOrder.execution_id(ORDER)
    assert first.headers["plait-execution-id"] == execution_id
    assert again.headers["plait-execution-id"] == execution_id
    assert again.content == first.content
    assert await stored_count(engine) == 1


async def test_a_declared_error_is_500_with_its_tagged_json(proxy: str) -> None:
    async with http_client(proxy) as http:
        response = await http.post("/httpprocessorder", json={**ORDER, "amount_cents": 0})
    assert response.status_code == 500
    # Effect's HttpApi body for a typed error: the tagged error itself.
    assert response.json() == {
        "_tag": "CardDeclined",
        "reason": "nothing to charge",
        "amount_cents": 0,
    }
    assert response.headers["plait-cause"] == "Fail"


async def test_a_defect_is_500_with_its_name_and_message(proxy: str) -> None:
    async with http_client(proxy) as http:
        response = await http.post("/httpprocessorder", json={**ORDER, "amount_cents": 13})
    assert response.status_code == 500
    assert response.headers["plait-cause"] == "Die"
    assert response.json() == {
        "_tag": "Die",
        "defect": {"name": "RuntimeError", "message": "unlucky amount"},
    }


async def test_an_effect_httpapiclient_request_works_as_it_is(
    proxy: str, engine: plait.Engine
) -> None:
    # Byte for byte what Effect's HttpApiClient sends for Hazel's MessageNotificationWorkflow:
    # JSON.stringify of the payload, content-type application/json, no group prefix.
    body = (
        b'{"messageId":"m-42","channelId":"c-1","authorId":"u-7","channelType":"public",'
        b'"content":"hi @[userId:u-9]","replyToMessageId":null}'
    )
    headers = {"content-type": "application/json", "accept": "application/json"}
    async with http_client(proxy) as http:
        executed = await http.post("/messagenotificationworkflow", content=body, headers=headers)
        discarded = await http.post(
            "/messagenotificationworkflow/discard",
            content=body.replace(b"m-42", b"m-43"),
            headers=headers,
        )
        execution_id = discarded.headers["plait-execution-id"]
        resumed = await http.post(
            "/messagenotificationworkflow/resume",
            content=json.dumps({"executionId": execution_id}).encode(),
            headers=headers,
        )
    # Void success: 200 with an empty body, as Effect's HttpApi answers it.
    assert (executed.status_code, executed.content) == (200, b"")
    assert (discarded.status_code, discarded.content) == (204, b"")
    assert (resumed.status_code, resumed.content) == (204, b"")
    assert execution_id == plait.execution_id("MessageNotificationWorkflow", "m-43")
    result = await poll_until(
        wf.MessageNotificationWorkflow, execution_id, plait.Complete, engine=engine
    )
    assert result == plait.Complete(plait.Success(None))
    assert "m-42" in wf.notified
    assert await stored_count(engine) == 2


# plait's routes --------------------------------------------------------------------------


async def test_status_follows_an_execution_from_suspended_to_succeeded(
    proxy: str, engine: plait.Engine
) -> None:
    big = {**ORDER, "order_id": "o-big", "amount_cents": 250_000}
    async with http_client(proxy) as http:
        started = await http.post("/httpprocessorder/discard", json=big)
        assert started.status_code == 204
        execution_id = started.headers["plait-execution-id"]
        await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
        suspended = await http.get(f"/httpprocessorder/{execution_id}")
        assert suspended.json() == {
            "executionId": execution_id,
            "workflow": "HttpProcessOrder",
            "status": "suspended",
            "result": None,
            "error": None,
        }
        waiting = asyncio.ensure_future(http.post("/httpprocessorder", json=big))
        token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
        completed = await http.post(
            f"/deferred/{token}", json={"_tag": "Success", "value": "ops-lead"}
        )
        assert (completed.status_code, completed.json()) == (200, {"stored": True})
        answer = await waiting
        assert answer.status_code == 200
        assert answer.json()["approved_by"] == "ops-lead"
        succeeded = await http.get(f"/httpprocessorder/{execution_id}")
        again = await http.post(f"/deferred/{token}", json={"_tag": "Success", "value": "x"})
    assert succeeded.json()["status"] == "succeeded"
    assert succeeded.json()["result"] == {
        "charge_id": "ch_o-big",
        "amount_cents": 250_000,
        "approved_by": "ops-lead",
    }
    assert (again.status_code, again.json()) == (200, {"stored": False})


async def test_status_of_running_and_failed_executions(proxy: str) -> None:
    async with http_client(proxy) as http:
        key = f"running-{uuid.uuid4().hex}"
        started = await http.post("/hold/discard", json={"key": key})
        execution_id = started.headers["plait-execution-id"]
        running = await http.get(f"/hold/{execution_id}")
        wf.release(key)
        declined = await http.post(
            "/httpprocessorder", json={**ORDER, "order_id": "o-0", "amount_cents": 0}
        )
        failed = await http.get(f"/httpprocessorder/{declined.headers['plait-execution-id']}")
    assert running.json()["status"] == "running"
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"] == {
        "_tag": "Fail",
        "error": {"_tag": "CardDeclined", "reason": "nothing to charge", "amount_cents": 0},
    }


async def test_a_deferred_failed_with_a_declared_error_fails_the_workflow_with_it(
    proxy: str, engine: plait.Engine
) -> None:
    big = {**ORDER, "order_id": "o-rejected", "amount_cents": 300_000}
    async with http_client(proxy) as http:
        started = await http.post("/httpprocessorder/discard", json=big)
        execution_id = started.headers["plait-execution-id"]
        await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
        token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
        failed = await http.post(
            f"/deferred/{token}",
            json={"_tag": "Failure", "error": {"_tag": "Rejected", "by": "risk"}},
        )
        assert failed.json() == {"stored": True}
        answer = await http.post("/httpprocessorder", json=big)
    assert answer.status_code == 500
    assert answer.json() == {"_tag": "Rejected", "by": "risk"}


async def test_interrupt_and_resume_by_id(proxy: str, engine: plait.Engine) -> None:
    big = {**ORDER, "order_id": "o-stop", "amount_cents": 100_000}
    async with http_client(proxy) as http:
        started = await http.post("/httpprocessorder/discard", json=big)
        execution_id = started.headers["plait-execution-id"]
        await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
        resumed = await http.post(f"/httpprocessorder/{execution_id}/resume")
        assert resumed.status_code == 204
        await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
        interrupted = await http.post(f"/httpprocessorder/{execution_id}/interrupt")
        assert interrupted.status_code == 204
        await poll_until(wf.ProcessOrder, execution_id, plait.Complete, engine=engine)
        status = await http.get(f"/httpprocessorder/{execution_id}")
        execute = await http.post("/httpprocessorder", json=big)
    assert status.json()["status"] == "failed"
    assert status.json()["error"] == {"_tag": "Interrupt", "executionId": execution_id}
    assert execute.status_code == 500
    assert execute.headers["plait-cause"] == "Interrupt"


async def test_health_and_openapi(proxy: str) -> None:
    async with http_client(proxy) as http:
        health = await http.get("/health")
        schema = (await http.get("/openapi.json")).json()
    assert (health.status_code, health.text) == (200, "ok")
    operations = {
        op["operationId"]: (method, path)
        for path, item in schema["paths"].items()
        for method, op in item.items()
    }
    assert operations["HttpProcessOrder"] == ("post", "/httpprocessorder")
    assert operations["HttpProcessOrderDiscard"] == ("post", "/httpprocessorder/discard")
    assert operations["HttpProcessOrderResume"] == ("post", "/httpprocessorder/resume")
    assert operations["HttpProcessOrderStatus"] == ("get", "/httpprocessorder/{execution_id}")
    assert operations["completeDeferred"] == ("post", "/deferred/{token}")
    execute = schema["paths"]["/httpprocessorder"]["post"]
    body_ref = execute["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/Order"
    components = schema["components"]["schemas"]
    assert set(components["Order"]["required"]) == {"order_id", "email", "amount_cents"}
    assert components["CardDeclined"]["properties"]["_tag"]["const"] == "CardDeclined"
    failures = execute["responses"]["500"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/CardDeclined"} in failures
    assert {"$ref": "#/components/schemas/Rejected"} in failures
    ok = execute["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Receipt"}
    void = schema["paths"]["/messagenotificationworkflow"]["post"]["responses"]["200"]
    assert "content" not in void


# Bad input: a 4xx naming the problem, and nothing stored -----------------------------------

BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (what, method, path, request keywords, status, tag)
    ("unknown workflow", "POST", "/nosuchworkflow", {"json": ORDER}, 404, "NotFoundError"),
    (
        "invalid JSON",
        "POST",
        "/httpprocessorder",
        {"content": b'{"order_id": "o-1",', "headers": {"content-type": "application/json"}},
        400,
        "MalformedRequestError",
    ),
    (
        "not JSON at all",
        "POST",
        "/httpprocessorder",
        {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
        400,
        "MalformedRequestError",
    ),
    (
        "a form post",
        "POST",
        "/httpprocessorder",
        {"data": {"order_id": "o-1"}},
        415,
        "UnsupportedMediaTypeError",
    ),
    (
        "wrong types",
        "POST",
        "/httpprocessorder",
        {"json": {"order_id": 7, "email": "a@b", "amount_cents": "lots"}},
        422,
        "PayloadError",
    ),
    ("a list", "POST", "/httpprocessorder", {"json": [ORDER]}, 422, "PayloadError"),
    (
        "text that is not Unicode (a lone surrogate)",
        "POST",
        "/hold",
        {"content": b'{"key": "\\ud800"}', "headers": {"content-type": "application/json"}},
        422,
        "PayloadError",
    ),
    ("no body", "POST", "/httpprocessorder/discard", {}, 422, "PayloadError"),
    (
        "oversized body",
        "POST",
        "/httpprocessorder",
        {"json": {**ORDER, "email": "x" * 2_000}},
        413,
        "RequestTooLargeError",
    ),
    (
        "oversized, streamed",
        "POST",
        "/httpprocessorder",
        {
            "stream": [b'{"order_id": "', b"x" * 3_000, b'"}'],
            "headers": {"content-type": "application/json"},
        },
        413,
        "RequestTooLargeError",
    ),
    ("malformed token", "POST", "/deferred/not-a-token", {"json": {"_tag": "Success"}}, 400, ""),
    ("malformed id", "GET", "/httpprocessorder/XYZ", {}, 422, "InvalidRequestError"),
    (
        "unknown execution",
        "GET",
        f"/httpprocessorder/{'0' * 32}",
        {},
        404,
        "UnknownExecutionError",
    ),
    (
        "unknown execution, resume",
        "POST",
        "/httpprocessorder/resume",
        {"json": {"executionId": "f" * 32}},
        404,
        "UnknownExecutionError",
    ),
    (
        "resume without an id",
        "POST",
        "/httpprocessorder/resume",
        {"json": {"id": "f" * 32}},
        422,
        "InvalidRequestError",
    ),
    (
        "unknown execution, interrupt",
        "POST",
        f"/httpprocessorder/{'a' * 32}/interrupt",
        {},
        404,
        "UnknownExecutionError",
    ),
    ("wrong method", "GET", "/httpprocessorder/discard", {}, 422, "InvalidRequestError"),
]


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_bad_requests_get_their_4xx_and_store_nothing(engine: plait.Engine) -> None:
    app = proxy_app(WORKFLOWS, engine=engine, deferreds=[wf.Approval], max_body_bytes=1_024)
    async with live_proxy(app) as url, http_client(url) as http:
        for what, method, path, keywords, status, tag in BAD_REQUESTS:
            if "stream" in keywords:  # chunked: no Content-Length to refuse it by
                chunks = keywords["stream"]
                keywords = {k: v for k, v in keywords.items() if k != "stream"}
                keywords["content"] = _chunks(chunks)
            response = await http.request(method, path, **keywords)
            assert response.status_code == status, (what, response.text)
            body = response.json()
            assert body["_tag"] == (tag or "MalformedTokenError"), (what, body)
            assert body["message"], what
        assert await stored_count(engine) == 0


async def _chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_payload_error_carries_pydantics_details(proxy: str, engine: plait.Engine) -> None:
    async with http_client(proxy) as http:
        response = await http.post(
            "/httpprocessorder", json={"order_id": "o-1", "amount_cents": "many"}
        )
    assert response.status_code == 422
    details = response.json()["errors"]
    assert {(tuple(d["loc"]), d["type"]) for d in details} == {
        (("email",), "missing"),
        (("amount_cents",), "int_parsing"),
    }
    assert await stored_count(engine) == 0


async def test_a_deferred_value_of_the_wrong_type_is_422_and_stores_nothing(
    proxy: str, engine: plait.Engine
) -> None:
    big = {**ORDER, "order_id": "o-typed", "amount_cents": 100_000}
    async with http_client(proxy) as http:
        started = await http.post("/httpprocessorder/discard", json=big)
        execution_id = started.headers["plait-execution-id"]
        await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
        token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
        cases = [
            ({"_tag": "Success", "value": ["not", "a", "str"]}, 422, "DeferredValueError"),
            ({"_tag": "Failure", "error": {"_tag": "Nope"}}, 422, "DeferredValueError"),
            ({"_tag": "Failure", "error": {"_tag": "Rejected"}}, 422, "DeferredValueError"),
            ({"_tag": "Maybe", "value": "x"}, 422, "InvalidRequestError"),
        ]
        for body, status, tag in cases:
            response = await http.post(f"/deferred/{token}", json=body)
            assert (response.status_code, response.json()["_tag"]) == (status, tag), body
        assert (await http.post(f"/deferred/{token}", json={"_tag": "Success"})).status_code == (
            422
        )
        other = wf.Approval.token_from_execution_id(wf.ProcessOrder, "b" * 32)
        unknown = await http.post(f"/deferred/{other}", json={"_tag": "Success", "value": "x"})
        unserved = plait.DeferredToken("HttpProcessOrder", execution_id, "Other").encode()
        not_served = await http.post(f"/deferred/{unserved}", json={"_tag": "Success"})
    assert (unknown.status_code, unknown.json()["_tag"]) == (404, "DeferredTokenError")
    assert (not_served.status_code, not_served.json()["_tag"]) == (404, "NotFoundError")
    assert await deferred_names(engine, execution_id) == set()
    assert await stored_count(engine) == 1  # the execution itself, still suspended


async def test_an_execution_of_another_workflow_is_not_found(proxy: str) -> None:
    async with http_client(proxy) as http:
        key = f"other-{uuid.uuid4().hex}"
        started = await http.post("/hold/discard", json={"key": key})
        execution_id = started.headers["plait-execution-id"]
        wf.release(key)
        response = await http.get(f"/httpprocessorder/{execution_id}")
    assert (response.status_code, response.json()["_tag"]) == (404, "UnknownExecutionError")


# Who may call ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_with_a_token_every_route_but_health_needs_it(engine: plait.Engine) -> None:
    token = "s3cr3t-" + "k" * 32
    app = proxy_app(WORKFLOWS, engine=engine, token=token)
    async with live_proxy(app) as url, http_client(url) as http:
        missing = await http.post("/httpprocessorder", json=ORDER)
        wrong = await http.post(
            "/httpprocessorder", json=ORDER, headers={"authorization": f"Bearer {token}x"}
        )
        basic = await http.post(
            "/httpprocessorder", json=ORDER, headers={"authorization": f"Basic {token}"}
        )
        schema = await http.get("/openapi.json")
        health = await http.get("/health")
        assert await stored_count(engine) == 0
        right = await http.post(
            "/httpprocessorder", json=ORDER, headers={"authorization": f"Bearer {token}"}
        )
    for refused in (missing, wrong, basic, schema):
        assert refused.status_code == 401
        assert refused.json()["_tag"] == "UnauthorizedError"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert health.status_code == 200
    assert right.status_code == 200


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
async def test_without_a_token_only_loopback_is_served(engine: plait.Engine) -> None:
    app = proxy_app(WORKFLOWS, engine=engine)
    with pytest.raises(plait.http.TokenRequiredError, match=r"0\.0\.0\.0"):
        plait.http.proxy_server(app, host="0.0.0.0")
    with pytest.raises(plait.http.TokenRequiredError):
        plait.http.proxy_server(app, host="::")
    with_token = proxy_app(WORKFLOWS, engine=plait.Engine.memory(), token="t" * 32)
    assert plait.http.proxy_server(with_token, host="0.0.0.0").config.host == "0.0.0.0"
    async with live_proxy(app) as url, http_client(url) as http:
        # A web page whose domain resolves to 127.0.0.1 (DNS rebinding) names its own host.
        rebound = await http.post(
            "/httpprocessorder", json=ORDER, headers={"host": "evil.example:3020"}
        )
        local = await http.get("/health", headers={"host": "localhost:3020"})
    assert rebound.status_code == 403
    assert rebound.json()["_tag"] == "ForbiddenError"
    assert local.status_code == 200
    # A request that reached the server on another address (the app mounted in a server
    # bound to every interface): refused before any route runs.
    answers: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        answers.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/health",
        "raw_path": b"/health",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"10.1.2.3:3020")],
        "server": ("10.1.2.3", 3020),
        "client": ("10.9.8.7", 50000),
        "scheme": "http",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    assert answers[0]["status"] == 403
    assert b"server address is 10.1.2.3" in answers[1]["body"]


async def test_the_proxy_mounts_inside_an_application(tmp_path: Path) -> None:
    engine = plait.Engine.sqlite(tmp_path / "plait.db")
    proxy = proxy_app(WORKFLOWS, engine=engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine:  # mounted, the proxy leaves the engine to its host
            yield

    host = FastAPI(lifespan=lifespan)
    host.mount("/workflows", proxy)

    @host.get("/")
    async def home() -> dict[str, str]:
        return {"app": "chat backend"}

    async with live_proxy(host) as url, http_client(url) as http:
        home_page = await http.get("/")
        executed = await http.post("/workflows/httpprocessorder", json=ORDER)
        status = await http.get(
            f"/workflows/httpprocessorder/{executed.headers['plait-execution-id']}"
        )
        health = await http.get("/workflows/health")
    assert home_page.json() == {"app": "chat backend"}
    assert executed.status_code == 200
    assert status.json()["status"] == "succeeded"
    assert health.text == "ok"


# Building the proxy ------------------------------------------------------------------------


def test_names_that_cannot_be_routes_are_refused() -> None:
    engine = plait.Engine.memory()
    health = plait.Workflow("Health", payload={"x": int})
    with pytest.raises(plait.InvalidArgumentError, match="proxy's own routes"):
        proxy_app([health], engine=engine)
    upper = plait.Workflow("HOLD", payload={"x": int})
    with pytest.raises(plait.InvalidArgumentError, match="share the route /hold"):
        proxy_app([wf.Hold, upper], engine=engine)
    slashed = plait.Workflow("a/b", payload={"x": int})
    with pytest.raises(plait.InvalidArgumentError, match="URL path segment"):
        proxy_app([slashed], engine=engine)
    for token in ("", "has space", "tab\t", "ünïcode"):
        with pytest.raises(plait.InvalidArgumentError, match="token"):
            proxy_app([wf.Hold], engine=engine, token=token)
    twin = plait.DurableDeferred("HttpApproval", success=int)
    with pytest.raises(plait.InvalidArgumentError, match="two deferreds"):
        proxy_app([wf.Hold], engine=engine, deferreds=[wf.Approval, twin])
    assert proxy_app([wf.Hold, wf.Hold], engine=engine).title == "plait workflow proxy"
