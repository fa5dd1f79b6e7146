"""First write wins, for every caller: a run whose step result or final result the store did not
keep goes on with the stored one, and a deferred value its type does not hold is refused before
anything is stored.

Each test runs on the memory store, a SQLite file and PostgreSQL. The competing write comes
through the engine's own journal, as a second writer's would reach the store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import plait
from plait.journal import Op
from plait.testing import VirtualClock
from tests.workflow_support import poll_until, settle

Picks: plait.Workflow[Any, str] = plait.Workflow("SfPicks", payload={"id": str}, success=str)


async def test_a_step_result_the_store_did_not_keep_is_replaced_by_the_stored_one(
    plait_engine: plait.Engine,
) -> None:
    bodies: list[str] = []

    @Picks.implement
    async def picks(payload: Any, execution_id: str) -> str:
        async def pick() -> str:
            bodies.append("pick")
            if len(bodies) == 1:
                # Another writer stores this step's result first.
                plait_engine._journal().write(
                    Op.append(execution_id, "Pick/1", 0, b'{"_tag":"Success","value":"theirs"}')
                )
            return "mine"

        first = await plait.Activity("Pick", success=str, execute=pick)
        second = await plait.Activity("Echo", success=str, execute=lambda: first)
        return f"{first}+{second}"

    assert await Picks.execute({"id": "a"}) == "theirs+theirs"
    assert bodies == ["pick"], "the stored result is replayed, not run again"
    assert await Picks.execute({"id": "a"}) == "theirs+theirs"


async def test_a_final_result_the_store_did_not_keep_is_not_what_callers_get(
    plait_engine: plait.Engine,
) -> None:
    @Picks.implement
    async def picks(payload: Any, execution_id: str) -> str:
        async def finish_elsewhere() -> None:
            # Another writer completes the execution first.
            plait_engine._journal().write(
                Op.status(execution_id, "complete", b'{"_tag":"Success","value":"stored"}')
            )

        await plait.Activity("FinishElsewhere", execute=finish_elsewhere)
        return "mine"

    callers = [asyncio.ensure_future(Picks.execute({"id": "b"})) for _ in range(3)]
    assert await asyncio.gather(*callers) == ["stored"] * 3
    execution_id = Picks.execution_id({"id": "b"})
    assert await Picks.poll(execution_id) == plait.Complete(plait.Success("stored"))


Approval: plait.DurableDeferred[int] = plait.DurableDeferred("SfApproval", success=int)
Approve: plait.Workflow[Any, int] = plait.Workflow("SfApprove", payload={"id": str}, success=int)


async def test_a_deferred_value_of_the_wrong_type_is_refused_and_nothing_is_stored(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    @Approve.implement
    async def approve(payload: Any, execution_id: str) -> int:
        return await Approval

    execution_id = await Approve.execute({"id": "c"}, discard=True)
    await poll_until(Approve, execution_id, plait.Suspended)
    token = Approval.token_from_execution_id(Approve, execution_id)
    with pytest.raises(plait.DeferredValueError) as refused:
        await Approval.succeed(token, "x")  # type: ignore[arg-type]
    assert isinstance(refused.value, plait.InvalidArgumentError)
    assert refused.value.deferred == "SfApproval"
    assert refused.value.errors[0]["type"] == "int_parsing"
    with pytest.raises(plait.DeferredValueError):
        await Approval.done(token, plait.Success(["not", "an", "int"]))
    await settle()
    assert await Approve.poll(execution_id) == plait.Suspended()
    # Nothing was stored: a correct completion still works.
    assert await Approval.succeed(token, 7)
    assert await poll_until(Approve, execution_id, plait.Complete) == plait.Complete(
        plait.Success(7)
    )
    assert not await Approval.succeed(token, 8)
