"""Code mypy --strict must refuse (checked, never run): each marked line, with that error code.

`tests/test_typecheck.py` compares mypy's errors with the `# E: <code>` marks, both ways.
"""

from __future__ import annotations

from pydantic import BaseModel

import plait
from plait.http import RecordingClient


class Order(BaseModel):
    order_id: str


class Invoice(BaseModel):
    number: int


ProcessOrder = plait.Workflow("TcRejectedOrder", payload=Order, success=str)
NoResult = plait.Workflow("TcRejectedNoResult", payload=Order)
Keyed = plait.Workflow(
    "TcRejectedKeyed",
    payload=Order,
    idempotency_key=lambda order: order.number,  # E: attr-defined
)


@plait.activity
async def charge(order_id: str, cents: int) -> str:
    return f"ch_{order_id}"


@plait.workflow(name="TcRejectedAdd")
async def add(a: int, b: int) -> int:
    return a + b


Approval = plait.DurableDeferred("TcRejectedApproval", success=bool)
Fire = plait.Activity("TcRejectedFire", execute=lambda: 1)  # no `success`: no result is kept


async def wrong_calls(order: Order) -> None:
    charge("o-1")  # E: call-arg
    charge("o-1", "100")  # E: arg-type
    charge("o-1", 100, extra=1)  # E: call-arg
    count: int = await charge("o-1", 100)  # E: assignment

    add(1)  # E: call-arg
    add("1", 2)  # E: arg-type
    text: str = await add(1, 2)  # E: assignment

    number: int = await ProcessOrder.execute(order)  # E: assignment
    await ProcessOrder.execute(Invoice(number=1))  # E: call-overload
    ProcessOrder(order)  # E: operator
    result: str = await NoResult.execute(order)  # E: func-returns-value, assignment

    await Approval.succeed("token", "yes")  # E: arg-type
    label: str = await Approval  # E: assignment
    fired: int = await Fire  # E: func-returns-value, assignment

    client = plait.Client()
    # The workflow passed in types the call: mypy finds no type to solve it with.
    charged: int = await client.execute(ProcessOrder, order)  # E: arg-type
    await client.execute(ProcessOrder, Invoice(number=1))  # E: misc
    await client.succeed(Approval, "token", "yes")  # E: misc
    RecordingClient().set_result(ProcessOrder, 42)  # E: misc


@ProcessOrder.implement  # E: arg-type
async def returns_the_wrong_type(order: Order, execution_id: str) -> int:
    return 1


Charges = plait.DurableQueue("TcRejectedCharges", payload=Order, success=str)


async def returns_a_number(order: Order) -> int:
    return 1


async def wrong_queue_calls(order: Order) -> None:
    receipt: int = await Charges.process(order)  # E: assignment
    await Charges.enqueue(Invoice(number=1))  # E: arg-type
    Charges.worker(returns_a_number)  # E: arg-type
