"""Types mypy --strict must infer for plait users' code (checked, never run).

Each `assert_type` fails the check in `tests/test_typecheck.py` if an inference regresses.
"""

from __future__ import annotations

from typing import Any, Literal, assert_type

from pydantic import BaseModel

import plait
from plait.http import RecordingClient, WorkflowClient


class Order(BaseModel):
    order_id: str
    cents: int


# Workflows: the payload class and the success type come from the arguments ----------------

ProcessOrder = plait.Workflow(
    "TcProcessOrder",
    payload=Order,
    success=str,
    idempotency_key=lambda order: order.order_id,  # the payload's type reaches the lambda
)
assert_type(ProcessOrder, plait.Workflow[Order, str])
assert_type(plait.Workflow("TcPositional", Order, str), plait.Workflow[Order, str])
assert_type(
    plait.Workflow("TcFields", payload={"n": int}, success=int), plait.Workflow[BaseModel, int]
)
assert_type(plait.Workflow("TcNoResult", payload=Order), plait.Workflow[Order, None])
assert_type(plait.Workflow("TcNone", payload=Order, success=None), plait.Workflow[Order, None])
assert_type(plait.Workflow("TcBare"), plait.Workflow[BaseModel, None])
assert_type(plait.Workflow("TcListed", success=list[str]), plait.Workflow[BaseModel, list[str]])
assert_type(plait.Workflow("TcModel", success=Order), plait.Workflow[BaseModel, Order])
# A type form that is not a class gives no result type to check against.
assert_type(plait.Workflow("TcOptional", success=int | None), plait.Workflow[BaseModel, Any])
assert_type(
    plait.Workflow("TcLiteral", success=Literal["yes", "no"]), plait.Workflow[BaseModel, Any]
)
Declared: plait.Workflow[Any, str] = plait.Workflow("TcDeclared", payload={"id": str}, success=str)


@ProcessOrder.implement
async def process_order(order: Order, execution_id: str) -> str:
    assert_type(order.order_id, str)
    return order.order_id


async def use_workflows() -> None:
    order = Order(order_id="o-1", cents=100)
    assert_type(await ProcessOrder.execute(order), str)
    assert_type(await ProcessOrder.execute({"order_id": "o-1", "cents": 1}), str)
    assert_type(await ProcessOrder.execute(order, discard=True), str)
    assert_type(await ProcessOrder.poll("id"), plait.Complete[str] | plait.Suspended | None)
    assert_type(ProcessOrder.validate({"order_id": "o-1", "cents": 1}), Order)
    assert_type(ProcessOrder.execution_id(order), str)


# Activities ----------------------------------------------------------------------------------


@plait.activity
async def charge(order: Order, cents: int) -> str:
    return f"ch_{order.order_id}"


@plait.activity
def send_receipt(email: str, charge_id: str) -> None:
    print(email, charge_id)


@plait.activity(name="TcTriple")
def triple(x: int) -> int:
    return x * 3


@plait.activity(name="TcParsed", success=Order)
def parsed(raw: str) -> dict[str, object]:  # validated into `success`
    return {"order_id": raw, "cents": 0}


@plait.activity(name="TcMaybe", success=int | None)
def maybe(x: int) -> int | None:
    return x or None


async def use_activities() -> None:
    order = Order(order_id="o-1", cents=100)
    assert_type(charge(order, 100), plait.Activity[str])
    assert_type(await charge(order, cents=100), str)
    assert_type(await send_receipt("a@example.org", "ch_1"), None)
    assert_type(await triple(3), int)
    assert_type(await parsed("o-2"), Order)
    assert_type(await maybe(0), Any)
    assert_type(await plait.Activity.retry(charge(order, 1), times=3), str)

    assert_type(plait.Activity("TcStep", execute=lambda: "x", success=str), plait.Activity[str])
    # No `success`: no result is kept, whatever the body returns.
    assert_type(plait.Activity("TcFire", execute=lambda: 1), plait.Activity[None])
    assert_type(
        plait.Activity("TcForm", execute=lambda: 1, success=int | None), plait.Activity[Any]
    )


# `@workflow` keeps the function's parameters and result ---------------------------------------


@plait.workflow(name="TcAdd", idempotency_key=lambda p: f"{p.a}+{p.b}")
async def add(a: int, b: int = 0) -> int:
    return a + b


@plait.workflow(name="TcGreet")
async def greet(name: str, execution_id: str = "") -> str:
    return f"hello {name} ({execution_id})"


async def use_decorated_workflows() -> None:
    assert_type(await add(1, 2), int)
    assert_type(await add(a=1), int)
    assert_type(await greet("Ada"), str)
    assert_type(await add.execute({"a": 1, "b": 2}), int)
    as_workflow: plait.Workflow[BaseModel, int] = add
    assert_type(as_workflow.name, str)


# Deferreds -----------------------------------------------------------------------------------

Approval = plait.DurableDeferred("TcApproval", success=bool)
assert_type(Approval, plait.DurableDeferred[bool])
assert_type(plait.DurableDeferred("TcSignal"), plait.DurableDeferred[None])
assert_type(plait.DurableDeferred("TcForm", success=int | None), plait.DurableDeferred[Any])


async def use_deferreds(token: str) -> None:
    assert_type(await Approval, bool)
    assert_type(await Approval.succeed(token, True), bool)


# Clients over HTTP: the workflow passed in gives the types ----------------------------------


async def use_clients(token: str) -> None:
    order = Order(order_id="o-1", cents=100)
    async with plait.Client("http://127.0.0.1:3020") as client:
        assert_type(await client.execute(ProcessOrder, order), str)
        assert_type(await client.execute(ProcessOrder, {"order_id": "o", "cents": 1}), str)
        assert_type(await client.execute(add, {"a": 1, "b": 2}), int)
        assert_type(await client.discard(ProcessOrder, order), str)
        assert_type(
            await client.poll(ProcessOrder, "id"), plait.Complete[str] | plait.Suspended | None
        )
        assert_type(await client.succeed(Approval, token, True), bool)
    recording = RecordingClient()
    recording.set_result(ProcessOrder, "ch_1")
    assert_type(await recording.execute(ProcessOrder, order), str)
    assert_type(recording.payloads(ProcessOrder), list[Order])
    backend: WorkflowClient = recording
    assert_type(await backend.execute(ProcessOrder, order), str)


# Durable queues: the payload class and the handler's result type come from the arguments ---

Charges = plait.DurableQueue(
    "TcCharges", payload=Order, success=str, idempotency_key=lambda o: o.order_id
)
assert_type(Charges, plait.DurableQueue[Order, str])
assert_type(plait.DurableQueue("TcNoResultQueue", payload=Order), plait.DurableQueue[Order, None])


async def charge_card(order: Order) -> str:
    return order.order_id


def charge_sync(order: Order) -> str:
    return order.order_id


async def use_queues(order: Order) -> None:
    assert_type(await Charges.process(order), str)
    assert_type(await Charges.process({"order_id": "o", "cents": 1}), str)
    assert_type(await Charges.enqueue(order), str)
    assert_type(Charges.worker(charge_card, concurrency=4), plait.QueueWorker[Order, str])
    assert_type(Charges.worker(charge_sync), plait.QueueWorker[Order, str])
    async with Charges.worker(charge_card) as worker:
        assert_type(worker, plait.QueueWorker[Order, str])
