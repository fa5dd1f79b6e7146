"""Careless use of the workflow API: a typed error naming the problem, nothing half-started.

Each engine test runs on the memory store, a SQLite file and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

import plait
from tests.workflow_support import deferred_names, poll_until, record, settle, stored_count

Gate: plait.DurableDeferred[str] = plait.DurableDeferred("BadGate", success=str)
OtherGate: plait.DurableDeferred[str] = plait.DurableDeferred("OtherBadGate", success=str)


# Payloads and implementations ---------------------------------------------------------------------

Order: plait.Workflow[Any, int] = plait.Workflow(
    "BadOrder", payload={"sku": str, "qty": int}, success=int
)


async def test_an_invalid_payload_raises_payload_error_and_starts_nothing(
    plait_engine: plait.Engine,
) -> None:
    runs: list[str] = []

    @Order.implement
    async def order(payload: Any, execution_id: str) -> int:
        runs.append(execution_id)
        return int(payload.qty)

    with pytest.raises(plait.PayloadError) as err:
        await Order.execute({"sku": "a", "qty": "many"})
    assert isinstance(err.value, plait.InvalidArgumentError)
    assert err.value.workflow == "BadOrder"
    assert [(e["loc"], e["type"]) for e in err.value.errors] == [(("qty",), "int_parsing")]
    assert "BadOrder" in str(err.value)

    with pytest.raises(plait.PayloadError) as err:
        await Order.execute({"qty": 1}, discard=True)
    assert [(e["loc"], e["type"]) for e in err.value.errors] == [(("sku",), "missing")]

    with pytest.raises(plait.PayloadError) as err:
        await Order.execute(42)
    assert len(err.value.errors) == 1

    with pytest.raises(plait.PayloadError):
        Order.execution_id({"sku": None, "qty": 1})

    assert runs == []
    assert await stored_count(plait_engine) == 0
    assert await record(plait_engine, Order.execution_id({"sku": "a", "qty": 1})) is None
    assert await Order.execute({"sku": "a", "qty": "3"}) == 3
    assert await stored_count(plait_engine) == 1


Unimplemented: plait.Workflow[Any, None] = plait.Workflow("BadUnimplemented", payload={"id": str})


async def test_a_workflow_without_implementation_raises_and_starts_nothing(
    plait_engine: plait.Engine,
) -> None:
    with pytest.raises(plait.WorkflowNotImplementedError, match="BadUnimplemented"):
        await Unimplemented.execute({"id": "x"})
    with pytest.raises(plait.WorkflowNotImplementedError):
        await Unimplemented.execute({"id": "x"}, discard=True)
    assert await stored_count(plait_engine) == 0


def test_definitions_refuse_bad_arguments() -> None:
    with pytest.raises(plait.InvalidArgumentError):
        plait.Workflow("")
    with pytest.raises(TypeError):
        plait.Workflow("BadPayloadSpec", payload=42)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        plait.Workflow("BadErrorSpec", error=int)  # type: ignore[arg-type]
    with pytest.raises(plait.InvalidArgumentError):
        plait.Activity("", execute=lambda: 1)
    with pytest.raises(TypeError):
        plait.Activity("NotCallable", execute=42)  # type: ignore[call-overload]
    sync_workflow: plait.Workflow[Any, None] = plait.Workflow("BadSyncHandler")
    with pytest.raises(TypeError):
        sync_workflow.implement(lambda payload, execution_id: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        plait.workflow(name="BadSyncDecorated")(lambda: 1)  # type: ignore[arg-type,return-value]


NonStringKey: plait.Workflow[Any, None] = plait.Workflow(
    "BadKey",
    payload={"n": int},
    idempotency_key=lambda p: p.n,
)


async def test_an_idempotency_key_that_is_not_a_string_is_refused(
    plait_engine: plait.Engine,
) -> None:
    @NonStringKey.implement
    async def non_string_key(payload: Any, execution_id: str) -> None:
        return None

    with pytest.raises(plait.InvalidArgumentError, match="idempotency_key"):
        await NonStringKey.execute({"n": 1})
    assert await stored_count(plait_engine) == 0


# Deferred tokens ----------------------------------------------------------------------------------

Holder: plait.Workflow[Any, str] = plait.Workflow("BadHolder", payload={"id": str}, success=str)
Stranger: plait.Workflow[Any, str] = plait.Workflow("BadStranger", payload={"id": str}, success=str)


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def test_deferred_tokens_that_do_not_fit_are_refused(plait_engine: plait.Engine) -> None:
    @Holder.implement
    async def holder(payload: Any, execution_id: str) -> str:
        return await Gate

    execution_id = await Holder.execute({"id": "h"}, discard=True)
    await poll_until(Holder, execution_id, plait.Suspended)

    for malformed in (
        "",
        "not a token!",
        b64(["BadHolder", execution_id]),
        b64({"workflow": "BadHolder"}),
        b64(["BadHolder", execution_id, 3]),
    ):
        with pytest.raises(plait.MalformedTokenError):
            await Gate.succeed(malformed, "x")

    mismatched = {
        "unknown execution": Gate.token_from_execution_id(Holder, "0" * 32),
        "other workflow": Gate.token_from_execution_id(Stranger, execution_id),
        "other deferred": OtherGate.token_from_execution_id(Holder, execution_id),
    }
    for case, token in mismatched.items():
        with pytest.raises(plait.DeferredTokenError) as err:
            await Gate.succeed(token, "x")
        assert type(err.value) is plait.DeferredTokenError, case
    with pytest.raises(plait.DeferredTokenError):
        await Gate.fail(mismatched["other workflow"], RuntimeError("x"))

    await settle()
    assert await Holder.poll(execution_id) == plait.Suspended()
    assert await deferred_names(plait_engine, execution_id) == set()
    assert await stored_count(plait_engine) == 1

    assert await Gate.succeed(Gate.token_from_execution_id(Holder, execution_id), "right")
    assert await poll_until(Holder, execution_id, plait.Complete) == plait.Complete(
        plait.Success("right")
    )


# Result schemas -----------------------------------------------------------------------------------

Counting: plait.Workflow[Any, str] = plait.Workflow("BadCounting", payload={"id": str}, success=str)
Typed: plait.Workflow[Any, int] = plait.Workflow("BadTyped", payload={"id": str}, success=int)


async def test_an_activity_result_that_does_not_match_its_schema_is_a_result_schema_error(
    plait_engine: plait.Engine,
) -> None:
    caught: list[plait.Defect] = []
    counts = 0

    def count() -> Any:
        nonlocal counts
        counts += 1
        return "abc"

    @Counting.implement
    async def counting(payload: Any, execution_id: str) -> str:
        try:
            await plait.Activity("Count", execute=count, success=int)
        except plait.ResultSchemaError as err:
            caught.append(err)
        return f"survived {await Gate}"

    caller = asyncio.ensure_future(Counting.execute({"id": "c"}))
    execution_id = Counting.execution_id({"id": "c"})
    await poll_until(Counting, execution_id, plait.Suspended)
    await Gate.succeed(Gate.token_from_execution_id(Counting, execution_id), "!")
    assert await caller == "survived !"
    assert counts == 1
    assert len(caught) == 2  # the first run, then the replay
    for err in caught:
        assert type(err) is plait.ResultSchemaError
        assert isinstance(err, plait.Defect)
        assert "activity Count" in err.message
        assert "int" in err.message

    # The engine goes on working.
    @Typed.implement
    async def typed(payload: Any, execution_id: str) -> int:
        return 7 if payload.id == "good" else "not a number"  # type: ignore[return-value]

    assert await Typed.execute({"id": "good"}) == 7
    with pytest.raises(plait.ResultSchemaError, match="workflow BadTyped"):
        await Typed.execute({"id": "bad"})
    result = await Typed.poll(Typed.execution_id({"id": "bad"}))
    assert isinstance(result, plait.Complete)
    assert isinstance(result.exit, plait.Failure)
    assert type(result.exit.error) is plait.ResultSchemaError


# Outside a workflow -------------------------------------------------------------------------------


async def test_workflow_operations_outside_a_workflow_raise_not_in_workflow(
    plait_engine: plait.Engine,
) -> None:
    step = plait.Activity("Outside", execute=lambda: 1, success=int)
    with pytest.raises(plait.NotInWorkflowError):
        await step
    with pytest.raises(plait.NotInWorkflowError):
        await plait.Activity.retry(step, times=2)
    with pytest.raises(plait.NotInWorkflowError):
        await plait.Activity.race_all("outside", [step])
    with pytest.raises(plait.NotInWorkflowError):
        plait.Activity.idempotency_key("outside")
    with pytest.raises(plait.NotInWorkflowError):
        await Gate
    with pytest.raises(plait.NotInWorkflowError):
        Gate.token()
    with pytest.raises(plait.NotInWorkflowError):
        await plait.DurableClock.sleep("outside", 1)
    with pytest.raises(plait.NotInWorkflowError):
        plait.add_finalizer(lambda exit_: None)
    with pytest.raises(plait.NotInWorkflowError):
        await plait.with_compensation(step, lambda value: None)
    with pytest.raises(plait.NotInWorkflowError):
        plait.current_instance()
    assert await stored_count(plait_engine) == 0


Misused: plait.Workflow[Any, list[str]] = plait.Workflow(
    "BadMisused", payload={"id": str}, success=list[str]
)


async def test_bad_arguments_inside_a_workflow_are_typed_errors(plait_engine: plait.Engine) -> None:
    @Misused.implement
    async def misused(payload: Any, execution_id: str) -> list[str]:
        errors: list[str] = []
        step = plait.Activity("Misused", execute=lambda: 1, success=int)
        try:
            await plait.Activity.retry(step, times=-1)
        except plait.InvalidArgumentError:
            errors.append("retry")
        try:
            await plait.DurableDeferred.race_all("empty", [])
        except ValueError:
            errors.append("race")
        return errors

    assert await Misused.execute({"id": "m"}) == ["retry", "race"]
