"""What is durable when: a run's step results commit in the background, and nothing leaves the
run (an activity body, a child, a compensation, the result) before they have committed.

Each test runs on the memory store, a SQLite file and PostgreSQL; "committed" is read back
through the engine's store, whose reads see only committed data.
"""

from __future__ import annotations

import asyncio

import pytest

import plait
from plait.engine import engine_for
from plait.journal import FLUSH_AT, Op
from tests.workflow_support import poll_until

seen: dict[str, list[str]] = {}


async def stored_keys(execution_id: str) -> list[str]:
    """The step keys the current engine's store holds for the execution, committed."""
    journal = engine_for(None).journal
    assert journal is not None
    snapshot = await journal.snapshot(execution_id)
    assert snapshot is not None
    return [entry.key for entry in snapshot.entries]


@plait.activity
async def first(tag: str) -> str:
    return f"first {tag}"


@plait.activity
async def look(tag: str) -> str:
    seen[tag] = await stored_keys(plait.current_instance().execution_id)
    return tag


class Refused(plait.TaggedError):
    why: str


@plait.activity(error=Refused)
async def refuse(tag: str) -> str:
    raise Refused(why=tag)


@plait.activity
async def reserve(tag: str) -> str:
    return f"reserved {tag}"


@plait.workflow(name="DurableBeforeNextStep", idempotency_key=lambda p: p.tag)
async def two_steps(tag: str) -> str:
    await first(tag)
    return await look(tag)


@plait.workflow(name="DurableBeforeCompensation", idempotency_key=lambda p: p.tag, error=Refused)
async def saga(tag: str) -> str:
    async def undo(_: str) -> None:
        seen[tag] = await stored_keys(plait.current_instance().execution_id)

    await plait.with_compensation(reserve(tag), undo)
    return await refuse(tag)


@plait.activity
async def look_at(tag: str, execution_id: str) -> str:
    seen[tag] = await stored_keys(execution_id)
    return tag


@plait.workflow(name="DurableChild", idempotency_key=lambda p: p.tag)
async def child(tag: str, parent_id: str) -> str:
    return await look_at(tag, parent_id)


@plait.workflow(name="DurableBeforeChild", idempotency_key=lambda p: p.tag)
async def parent(tag: str) -> str:
    await first(tag)
    return await child(tag=f"{tag}/child", parent_id=plait.current_instance().execution_id)


async def test_the_next_activity_starts_after_the_previous_result_is_committed(
    plait_engine: plait.Engine,
) -> None:
    assert await two_steps(tag="next") == "next"
    assert seen["next"] == ["first/1"]


async def test_a_compensation_runs_after_the_failed_step_is_committed(
    plait_engine: plait.Engine,
) -> None:
    with pytest.raises(Refused):
        await saga(tag="undo")
    assert seen["undo"] == ["reserve/1", "refuse/1"]


async def test_a_child_starts_after_the_parents_steps_are_committed(
    plait_engine: plait.Engine,
) -> None:
    assert await parent(tag="p") == "p/child"
    assert seen["p/child"] == ["first/1"]


async def test_a_result_reaches_its_caller_only_once_committed(
    plait_engine: plait.Engine,
) -> None:
    # More than FLUSH_AT writes in one loop iteration: they reach the store in several batches.
    count = 3 * FLUSH_AT
    results = await asyncio.gather(*(two_steps(tag=f"many-{n}") for n in range(count)))
    assert results == [f"many-{n}" for n in range(count)]
    journal = plait_engine.journal
    assert journal is not None
    for n in range(count):
        record = await journal.execution(two_steps.execution_id({"tag": f"many-{n}"}))
        assert record is not None
        assert record.status == "complete"


async def test_an_op_the_store_refuses_fails_alone(plait_engine: plait.Engine) -> None:
    """A write the store cannot take (here a NUL in an id) fails only its own op, even when
    it shares a loop iteration, and so a commit, with others."""
    journal = plait_engine.journal
    assert journal is not None
    if journal.immediate:
        pytest.skip("the memory store applies each op at once")
    ops = [
        Op.start("good-1", "Alone", b"{}", None),
        Op.start("bad\0id", "Alone", b"{}", None),
        Op.start("good-2", "Alone", b"{}", None),
    ]
    futures = [journal.write(op) for op in ops]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], plait.InvalidArgumentError)
    assert "NUL" in str(results[1])
    for good in ("good-1", "good-2"):
        assert await journal.execution(good) is not None


async def test_ops_written_together_commit_together(plait_engine: plait.Engine) -> None:
    """`write_together` keeps its ops in one batch, so one transaction, even when the ops
    queued before them bring the batch to its flush size (as a timer's firing must: its
    deferred, the execution's running mark and the timer's removal, all or none)."""
    journal = plait_engine.journal
    assert journal is not None
    if journal.immediate:
        pytest.skip("the memory store applies each op at once")
    execution = "together"
    assert await journal.write(Op.start(execution, "Together", b"{}", None)) is None
    queued = [
        journal.queue(Op.append(execution, f"step/{n}", n, b"1")) for n in range(FLUSH_AT - 1)
    ]
    together = journal.write_together(
        [Op.deferred(execution, "gate", b"1"), Op.status(execution, "running", None)]
    )
    assert await together == [True, True]
    assert await asyncio.gather(*(journal.wait(*q) for q in queued)) == [True] * (FLUSH_AT - 1)
    batch = queued[0][0]
    assert all(b is batch for b, _ in queued)
    assert len(batch.results) == FLUSH_AT + 1  # the appends and both ops: one commit


@pytest.mark.parametrize(
    "name", ["", "with\0nul", "lone \ud800 surrogate"], ids=["empty", "nul", "surrogate"]
)
def test_names_that_cannot_be_stored_are_refused_where_they_are_given(name: str) -> None:
    with pytest.raises(plait.InvalidArgumentError, match="name"):
        plait.Workflow(name)
    with pytest.raises(plait.InvalidArgumentError, match="name"):
        plait.Activity(name, execute=lambda: 1)
    with pytest.raises(plait.InvalidArgumentError, match="name"):
        plait.DurableDeferred(name)
    with pytest.raises(plait.InvalidArgumentError, match="name"):
        plait.activity(name=name)(lambda: 1)


async def test_poll_sees_the_committed_result(plait_engine: plait.Engine) -> None:
    execution_id = await two_steps.execute({"tag": "polled"}, discard=True)
    assert await poll_until(two_steps, execution_id, plait.Complete) == plait.Complete(
        plait.Success("polled")
    )
