"""The recording client: what a backend's tests use in place of the proxy (Hazel's mock layer)."""

from __future__ import annotations

import pytest

import plait
from plait.http import RecordingClient, ResultNotSetError
from tests import http_workflows as wf

ORDER = wf.Order(order_id="o-1", email="a@example.org", amount_cents=4999)
MESSAGE = {
    "messageId": "m-1",
    "channelId": "c-1",
    "authorId": "u-1",
    "channelType": "thread",
    "content": "hi",
}


async def test_it_records_what_was_started_with_which_payload() -> None:
    client = RecordingClient()
    await client.execute(wf.MessageNotificationWorkflow, MESSAGE)  # no result: succeeds
    execution_id = await client.discard(wf.ProcessOrder, ORDER)
    assert execution_id == wf.ProcessOrder.execution_id(ORDER)
    assert [(c.kind, c.name) for c in client.started()] == [
        ("execute", "MessageNotificationWorkflow"),
        ("discard", "HttpProcessOrder"),
    ]
    (message,) = client.payloads(wf.MessageNotificationWorkflow)
    assert (message.message_id, message.channel_type) == ("m-1", "thread")
    assert client.payloads(wf.ProcessOrder) == [ORDER]
    assert client.started(wf.Hold) == []


async def test_results_and_errors_the_test_sets() -> None:
    client = RecordingClient()
    with pytest.raises(ResultNotSetError, match="set_result"):
        await client.execute(wf.ProcessOrder, ORDER)
    receipt = wf.Receipt(charge_id="ch_test", amount_cents=1)
    client.set_result(wf.ProcessOrder, receipt)
    declined = wf.CardDeclined(reason="test", amount_cents=0)
    free = ORDER.model_copy(update={"order_id": "o-free"})
    client.set_error(wf.ProcessOrder, declined, payload=free)  # this execution only
    assert await client.execute(wf.ProcessOrder, ORDER) == receipt
    with pytest.raises(wf.CardDeclined) as raised:
        await client.execute(wf.ProcessOrder, free)
    assert raised.value == declined
    # An error the workflow does not declare comes back as it would over HTTP: a Defect.
    client.set_error(wf.ProcessOrder, KeyError("gone"))
    with pytest.raises(plait.Defect, match="KeyError"):
        await client.execute(wf.ProcessOrder, ORDER)
    # Results are checked against the workflow's success type.
    client.set_result(wf.Hold, "done")
    with pytest.raises(plait.InvalidArgumentError, match="not a result"):
        client.set_result(wf.ProcessOrder, "a string")  # type: ignore[misc]
    assert await client.poll(wf.ProcessOrder, wf.ProcessOrder.execution_id(free)) == (
        plait.Complete(plait.Failure(declined))
    )


async def test_payloads_are_validated_as_the_real_client_does() -> None:
    client = RecordingClient()
    with pytest.raises(plait.PayloadError):
        await client.execute(wf.ProcessOrder, {"order_id": "o-1"})
    assert client.calls == []


async def test_poll_interrupt_resume_and_deferreds_are_recorded() -> None:
    client = RecordingClient()
    execution_id = await client.discard(wf.Hold, {"key": "k"})
    assert await client.poll(wf.Hold, execution_id) is None  # nothing set: running
    with pytest.raises(plait.UnknownExecutionError):
        await client.poll(wf.Hold, "0" * 32)
    await client.interrupt(wf.Hold, execution_id)
    await client.resume("Hold", execution_id)
    token = wf.Approval.token_from_execution_id(wf.ProcessOrder, "a" * 32)
    assert await client.succeed(wf.Approval, token, "ok") is True
    assert await client.fail(wf.Approval, token, wf.Rejected(by="x")) is False  # first stays
    with pytest.raises(plait.DeferredValueError):
        await client.succeed(wf.Approval, token, ["no"])  # type: ignore[misc]
    with pytest.raises(plait.MalformedTokenError):
        await client.succeed(wf.Approval, "garbage", "ok")
    assert [(c.kind, c.name) for c in client.calls] == [
        ("discard", "Hold"),
        ("poll", "Hold"),
        ("poll", "Hold"),
        ("interrupt", "Hold"),
        ("resume", "Hold"),
        ("done", "HttpApproval"),
        ("done", "HttpApproval"),
    ]
    assert client.calls[-2].exit == plait.Success("ok")
