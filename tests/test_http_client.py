"""The typed client against a live proxy: results as their types, declared errors as themselves,
plait's refusals as plait's errors, and retries that keep to one execution."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import plait
from plait.http import (
    Client,
    ProxyUnavailableError,
    RecordingClient,
    UnauthorizedError,
    WorkflowClient,
    proxy_app,
)
from tests import http_workflows as wf
from tests.http_support import free_port, live_proxy
from tests.workflow_support import deferred_names, poll_until, stored_count

ORDER = wf.Order(order_id="o-1", email="a@example.org", amount_cents=4999)
WORKFLOWS: list[plait.Workflow[Any, Any]] = [
    wf.ProcessOrder,
    wf.MessageNotificationWorkflow,
    wf.Hold,
]


@pytest.fixture
def engine(tmp_path: Path) -> plait.Engine:
    return plait.Engine.sqlite(tmp_path / "plait.db")


@pytest_asyncio.fixture
async def client(engine: plait.Engine) -> AsyncIterator[Client]:
    app = proxy_app(WORKFLOWS, engine=engine, deferreds=[wf.Approval])
    async with live_proxy(app) as url, Client(url) as client:
        yield client


async def test_results_come_back_as_the_workflows_types(client: Client) -> None:
    receipt = await client.execute(wf.ProcessOrder, ORDER)
    assert receipt == wf.Receipt(charge_id="ch_o-1", amount_cents=4999)
    assert isinstance(receipt, wf.Receipt)
    as_dict = await client.execute(wf.ProcessOrder, ORDER.model_dump())
    assert as_dict == receipt
    message = {
        "messageId": "m-1",
        "channelId": "c-1",
        "authorId": "u-1",
        "channelType": "thread",
        "content": "hello",
    }
    await client.execute(wf.MessageNotificationWorkflow, message)  # no result: None
    done = await client.poll(
        wf.MessageNotificationWorkflow, plait.execution_id("MessageNotificationWorkflow", "m-1")
    )
    assert done == plait.Complete(plait.Success(None))


async def test_declared_errors_are_raised_again_as_themselves(client: Client) -> None:
    free = ORDER.model_copy(update={"order_id": "o-free", "amount_cents": 0})
    with pytest.raises(wf.CardDeclined) as declined:
        await client.execute(wf.ProcessOrder, free)
    assert declined.value == wf.CardDeclined(reason="nothing to charge", amount_cents=0)
    unlucky = ORDER.model_copy(update={"order_id": "o-13", "amount_cents": 13})
    with pytest.raises(plait.Defect) as defect:
        await client.execute(wf.ProcessOrder, unlucky)
    assert (defect.value.type_name, defect.value.message) == ("RuntimeError", "unlucky amount")
    result = await client.poll(wf.ProcessOrder, wf.ProcessOrder.execution_id(free))
    assert result == plait.Complete(plait.Failure(declined.value))


async def test_discard_poll_deferreds_interrupt_and_resume(
    client: Client, engine: plait.Engine
) -> None:
    big = ORDER.model_copy(update={"order_id": "o-big", "amount_cents": 500_000})
    execution_id = await client.discard(wf.ProcessOrder, big)
    assert execution_id == wf.ProcessOrder.execution_id(big)
    assert await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=engine)
    assert await client.poll(wf.ProcessOrder, execution_id) == plait.Suspended(None)
    await client.resume(wf.ProcessOrder, execution_id)
    token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
    with pytest.raises(plait.DeferredValueError):  # refused before sending: nothing stored
        await client.succeed(wf.Approval, token, ["not", "a", "str"])  # type: ignore[misc]
    assert await deferred_names(engine, execution_id) == set()
    waiting = asyncio.ensure_future(client.execute(wf.ProcessOrder, big))
    assert await client.succeed(wf.Approval, token, "cfo") is True
    assert await client.succeed(wf.Approval, token, "someone else") is False
    assert (await waiting).approved_by == "cfo"
    polled = await client.poll(wf.ProcessOrder, execution_id)
    assert isinstance(polled, plait.Complete)
    assert polled.exit.unwrap().approved_by == "cfo"

    rejected = ORDER.model_copy(update={"order_id": "o-no", "amount_cents": 100_000})
    other = await client.discard(wf.ProcessOrder, rejected)
    await poll_until(wf.ProcessOrder, other, plait.Suspended, engine=engine)
    token = wf.Approval.token_from_execution_id(wf.ProcessOrder, other)
    assert await client.fail(wf.Approval, token, wf.Rejected(by="risk")) is True
    with pytest.raises(wf.Rejected) as raised:
        await client.execute(wf.ProcessOrder, rejected)
    assert raised.value.by == "risk"

    stopped = ORDER.model_copy(update={"order_id": "o-stop", "amount_cents": 100_000})
    third = await client.discard(wf.ProcessOrder, stopped)
    await poll_until(wf.ProcessOrder, third, plait.Suspended, engine=engine)
    await client.interrupt(wf.ProcessOrder, third)
    await poll_until(wf.ProcessOrder, third, plait.Complete, engine=engine)
    assert await client.poll(wf.ProcessOrder, third) == plait.Complete(
        plait.Failure(plait.Interrupted(third))
    )
    with pytest.raises(plait.Interrupted):
        await client.execute(wf.ProcessOrder, stopped)


async def test_a_running_execution_polls_none(client: Client) -> None:
    key = f"poll-{uuid.uuid4().hex}"
    execution_id = await client.discard(wf.Hold, {"key": key})
    assert await client.poll(wf.Hold, execution_id) is None
    status = await client.status("Hold", execution_id)
    assert (status.status, status.workflow) == ("running", "Hold")
    wf.release(key)
    assert await client.execute(wf.Hold, {"key": key}) == key


async def test_plaits_refusals_are_raised_as_plaits_errors(
    client: Client, engine: plait.Engine
) -> None:
    with pytest.raises(plait.PayloadError) as invalid:  # checked here: nothing is sent
        await client.execute(wf.ProcessOrder, {"order_id": "o-1"})
    assert {e["loc"] for e in invalid.value.errors} == {("email",), ("amount_cents",)}
    with pytest.raises(plait.UnknownExecutionError):
        await client.poll(wf.ProcessOrder, "0" * 32)
    with pytest.raises(plait.UnknownExecutionError):
        await client.resume(wf.ProcessOrder, "0" * 32)
    with pytest.raises(plait.http.InvalidRequestError):
        await client.interrupt(wf.ProcessOrder, "not-an-id")
    with pytest.raises(plait.MalformedTokenError):
        await client.succeed(wf.Approval, "garbage", "x")
    unknown = wf.Approval.token_from_execution_id(wf.ProcessOrder, "c" * 32)
    with pytest.raises(plait.DeferredTokenError):
        await client.succeed(wf.Approval, unknown, "x")
    unserved = plait.DurableDeferred("HttpUnserved", success=int)
    token = unserved.token_from_execution_id(wf.ProcessOrder, "c" * 32)
    with pytest.raises(plait.http.NotFoundError):
        await client.succeed(unserved, token, 1)
    with pytest.raises(plait.http.NotFoundError):
        await client.execute(plait.Workflow("HttpNotServed", payload={"n": int}), {"n": 1})
    assert await stored_count(engine) == 0


async def test_a_token_travels_with_every_call(engine: plait.Engine) -> None:
    app = proxy_app(WORKFLOWS, engine=engine, token="t0ken-" + "x" * 30)
    async with live_proxy(app) as url:
        async with Client(url, token="t0ken-" + "x" * 30) as allowed:
            assert (await allowed.execute(wf.ProcessOrder, ORDER)).charge_id == "ch_o-1"
            assert await allowed.health()
        async with Client(url) as anonymous:
            with pytest.raises(UnauthorizedError):
                await anonymous.execute(wf.ProcessOrder, ORDER)


async def test_nothing_listening_is_proxy_unavailable_after_the_retries() -> None:
    port = free_port()
    retry = plait.Schedule.spaced(0.01, times=3)
    async with Client(f"http://127.0.0.1:{port}", retry=retry) as client:
        with pytest.raises(ProxyUnavailableError, match=r"[Cc]onnect"):
            await client.execute(wf.ProcessOrder, ORDER)
        assert not await client.health()


async def test_retries_reach_a_proxy_that_starts_late(engine: plait.Engine) -> None:
    port = free_port()
    async with Client(f"http://127.0.0.1:{port}") as client:
        early = asyncio.ensure_future(client.execute(wf.ProcessOrder, ORDER))
        await asyncio.sleep(0.3)  # refused connections, retried
        assert not early.done()
        app = proxy_app(WORKFLOWS, engine=engine)
        async with live_proxy(app, port=port):
            assert (await early).charge_id == "ch_o-1"
            assert await stored_count(engine) == 1


async def test_a_retry_after_a_restart_joins_the_same_execution(tmp_path: Path) -> None:
    """The proxy stops while `execute` waits; the client retries until a new proxy on the same
    database serves it, and gets the result of the one execution."""
    database = tmp_path / "plait.db"
    big = ORDER.model_copy(update={"order_id": "o-restart", "amount_cents": 200_000})
    execution_id = wf.ProcessOrder.execution_id(big)
    port = free_port()
    async with Client(f"http://127.0.0.1:{port}") as client:
        first = plait.Engine.sqlite(database)
        app = proxy_app(WORKFLOWS, engine=first, deferreds=[wf.Approval])
        async with live_proxy(app, port=port, grace=1):
            waiting = asyncio.ensure_future(client.execute(wf.ProcessOrder, big))
            await poll_until(wf.ProcessOrder, execution_id, plait.Suspended, engine=first)
        # Stopped: the wait's connection was cut, and the client keeps trying.
        await asyncio.sleep(0.3)
        assert not waiting.done()
        second = plait.Engine.sqlite(database)
        app = proxy_app(WORKFLOWS, engine=second, deferreds=[wf.Approval])
        async with live_proxy(app, port=port):
            token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
            assert await client.succeed(wf.Approval, token, "night shift")
            receipt = await asyncio.wait_for(waiting, 20)
            assert receipt.approved_by == "night shift"
            assert await stored_count(second) == 1


async def notify_and_name(client: WorkflowClient, message: dict[str, Any]) -> str:
    """Backend code under test: it sees only a `WorkflowClient`."""
    await client.execute(wf.MessageNotificationWorkflow, message)
    return await client.execute(wf.Hold, {"key": message["messageId"]})


async def test_backend_code_runs_on_either_client(client: Client) -> None:
    message = {
        "messageId": f"m-{uuid.uuid4().hex}",
        "channelId": "c-1",
        "authorId": "u-1",
        "channelType": "public",
        "content": "hi",
    }
    wf.release(message["messageId"])
    assert await notify_and_name(client, message) == message["messageId"]
    recording = RecordingClient()
    recording.set_result(wf.Hold, "named")
    assert await notify_and_name(recording, message) == "named"
    assert [call.name for call in recording.started()] == ["MessageNotificationWorkflow", "Hold"]
