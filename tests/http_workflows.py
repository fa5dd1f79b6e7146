"""Workflows the HTTP tests serve; `plait serve tests.http_workflows` serves them too.

- `ProcessOrder`: a result (a model), a declared error, a defect, and a wait on a deferred for
  orders of 100,000 cents or more.
- `MessageNotificationWorkflow`: Hazel's, with no result and camelCase fields as Effect's
  schema names them, so an Effect-shaped request fits it as it is.
- `Hold`: stays running until the test lets it go (`release`).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

import plait


class Order(BaseModel):
    order_id: str
    email: str
    amount_cents: int


class Receipt(BaseModel):
    charge_id: str
    amount_cents: int
    approved_by: str | None = None


class CardDeclined(plait.TaggedError):
    reason: str
    amount_cents: int


class Rejected(plait.TaggedError):
    by: str


Approval = plait.DurableDeferred("HttpApproval", success=str, error=Rejected)


@plait.activity(name="HttpCharge")
async def charge(order: Order) -> str:
    return f"ch_{order.order_id}"


ProcessOrder = plait.Workflow(
    "HttpProcessOrder",
    payload=Order,
    success=Receipt,
    error=(CardDeclined, Rejected),
    idempotency_key=lambda order: order.order_id,
)


@ProcessOrder.implement
async def process_order(order: Order, execution_id: str) -> Receipt:
    if order.amount_cents <= 0:
        raise CardDeclined(reason="nothing to charge", amount_cents=order.amount_cents)
    if order.amount_cents == 13:
        raise RuntimeError("unlucky amount")
    approved_by = None
    if order.amount_cents >= 100_000:
        approved_by = await Approval  # a Rejected completion fails the workflow with it
    return Receipt(
        charge_id=await charge(order), amount_cents=order.amount_cents, approved_by=approved_by
    )


class NewMessage(BaseModel):
    """Hazel's `MessageNotificationWorkflow` payload, field names as Effect encodes them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    message_id: str
    channel_id: str
    author_id: str
    channel_type: Literal["public", "private", "thread", "direct", "single"]
    content: str
    reply_to_message_id: str | None = None


notified: list[str] = []

MessageNotificationWorkflow = plait.Workflow(
    "MessageNotificationWorkflow",
    payload=NewMessage,
    idempotency_key=lambda message: message.message_id,
)


@MessageNotificationWorkflow.implement
async def notify(message: NewMessage, execution_id: str) -> None:
    notified.append(message.message_id)


class HoldKey(BaseModel):
    key: str


_holds: dict[str, asyncio.Event] = {}


def release(key: str) -> None:
    """Lets the `Hold` execution for `key` finish."""
    _holds.setdefault(key, asyncio.Event()).set()


@plait.activity(name="HttpHoldWait")
async def wait_for_release(key: str) -> str:
    await _holds.setdefault(key, asyncio.Event()).wait()
    return key


Hold = plait.Workflow("Hold", payload=HoldKey, success=str, idempotency_key=lambda p: p.key)


@Hold.implement
async def hold(payload: HoldKey, execution_id: str) -> str:
    return await wait_for_release(payload.key)
