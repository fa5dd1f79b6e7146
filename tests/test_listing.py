"""Executions as operators see them: listed and searched a page at a time, counted by status,
and one execution's journal as a timeline (`Engine.executions`, `execution_counts`,
`timeline`).

Each test runs on the memory store, a real SQLite file and the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import plait
from plait.testing import VirtualClock
from tests.workflow_support import poll_until


class CardDeclined(plait.TaggedError):
    reason: str


Approval: plait.DurableDeferred[str] = plait.DurableDeferred("LsApproval", success=str)


@plait.activity(name="LsCharge")
async def charge(order_id: str) -> str:
    if plait.current_attempt() == 1:
        raise RuntimeError("card network timed out")
    return f"ch_{order_id}"


LsOrder: plait.Workflow[Any, str] = plait.Workflow(
    "LsOrder",
    payload={"order_id": str, "mode": str},
    success=str,
    error=CardDeclined,
    idempotency_key=lambda p: p.order_id,
)


@LsOrder.implement
async def ls_order(payload: Any, execution_id: str) -> str:
    if payload.mode == "declined":
        raise CardDeclined(reason="insufficient funds")
    if payload.mode == "boom":
        raise ValueError("a bug")
    if payload.mode == "wait":
        await plait.DurableClock.sleep("cool-off", timedelta(hours=1))
    if payload.mode in ("wait", "hold"):
        approved_by = await Approval
        return f"approved by {approved_by}"
    return await plait.Activity.retry(charge(payload.order_id), times=2)


LsOther: plait.Workflow[Any, int] = plait.Workflow("LsOther", payload={"n": int}, success=int)


@LsOther.implement
async def ls_other(payload: Any, execution_id: str) -> int:
    return int(payload.n)


def order(order_id: str, mode: str) -> dict[str, str]:
    return {"order_id": order_id, "mode": mode}


async def run_one(payload: dict[str, str]) -> str:
    """Starts an execution and waits for it to complete or suspend: its id."""
    execution_id = await LsOrder.execute(payload, discard=True)
    await poll_until(LsOrder, execution_id, plait.Complete | plait.Suspended)  # type: ignore[arg-type]
    # A few ms apart, so that creation times order them whatever the store's clock.
    await asyncio.sleep(0.003)
    return execution_id


async def store_every_kind(engine: plait.Engine) -> dict[str, str]:
    """One execution of each outcome, oldest first: their ids by name."""
    ids = {}
    for name, mode in [
        ("ok-1", "ok"),
        ("declined", "declined"),
        ("ok-2", "ok"),
        ("boom", "boom"),
        ("wait", "wait"),
        ("hold", "hold"),
    ]:
        ids[name] = await run_one(order(name, mode))
    await LsOrder.interrupt(ids["hold"])
    await poll_until(LsOrder, ids["hold"], plait.Complete)
    await LsOther.execute({"n": 7})
    ids["other"] = LsOther.execution_id({"n": 7})
    return ids


async def every_page(engine: plait.Engine, limit: int, **filters: Any) -> list[str]:
    found: list[str] = []
    after = None
    for _ in range(50):
        page = await engine.executions(limit=limit, after=after, **filters)
        assert len(page.executions) <= limit
        found.extend(e.execution_id for e in page.executions)
        after = page.next
        if after is None:
            return found
    raise AssertionError("the listing does not end")


async def test_listings_filter_by_workflow_status_and_time_and_page(
    plait_engine: plait.Engine,
) -> None:
    engine = plait_engine
    ids = await store_every_kind(engine)
    newest_first = [ids[k] for k in ["other", "hold", "wait", "boom", "ok-2", "declined", "ok-1"]]

    page = await engine.executions()
    assert [e.execution_id for e in page.executions] == newest_first
    assert page.next is None
    for limit in (1, 2, 3, 7):
        assert await every_page(engine, limit) == newest_first

    by_status = {
        status: await every_page(engine, 2, status=status)
        for status in ("running", "suspended", "succeeded", "failed", "interrupted")
    }
    assert by_status == {
        "running": [],
        "suspended": [ids["wait"]],
        "succeeded": [ids["other"], ids["ok-2"], ids["ok-1"]],
        "failed": [ids["boom"], ids["declined"]],
        "interrupted": [ids["hold"]],
    }
    assert await every_page(engine, 5, workflow="LsOther") == [ids["other"]]
    assert await every_page(engine, 5, workflow="LsOrder", status="succeeded") == [
        ids["ok-2"],
        ids["ok-1"],
    ]
    assert await every_page(engine, 5, workflow="Nothing") == []

    counts = await engine.execution_counts()
    assert counts == {"running": 0, "suspended": 1, "succeeded": 3, "failed": 2, "interrupted": 1}
    assert (await engine.execution_counts(cap=2))["succeeded"] == 2
    assert (await engine.execution_counts(workflow="LsOther"))["succeeded"] == 1

    # What each record says.
    records = {e.execution_id: e for e in page.executions}
    declined = records[ids["declined"]]
    assert declined.workflow == "LsOrder"
    assert declined.status == "failed"
    assert declined.error == {
        "_tag": "Fail",
        "error": {"_tag": "CardDeclined", "reason": "insufficient funds"},
    }
    boom_error = records[ids["boom"]].error
    assert boom_error is not None
    assert boom_error["_tag"] == "Die"
    assert records[ids["hold"]].error == {"_tag": "Interrupt", "executionId": ids["hold"]}
    assert records[ids["ok-1"]].error is None
    now = datetime.now(UTC)
    for record in records.values():
        assert now - timedelta(minutes=5) < record.created_at <= record.updated_at
        assert record.updated_at <= now + timedelta(seconds=5)

    # A time range, on creation times.
    boom_at = records[ids["boom"]].created_at
    since = await every_page(engine, 2, since=boom_at)
    assert since[-1] == ids["boom"]
    assert set(since) >= {ids["boom"], ids["wait"], ids["hold"], ids["other"]}
    until = await every_page(engine, 2, until=boom_at)
    assert ids["boom"] not in until
    assert set(until) | set(since) == set(newest_first)
    assert await every_page(engine, 2, since=now + timedelta(hours=1)) == []
    assert await every_page(engine, 2, until=datetime(2000, 1, 1, tzinfo=UTC)) == []

    # The public records serialise as the proxy answers them.
    dumped = page.model_dump(mode="json")
    assert dumped["executions"][0]["executionId"] == ids["other"]
    assert "createdAt" in dumped["executions"][0]


async def test_bad_listing_arguments_are_refused(plait_engine: plait.Engine) -> None:
    engine = plait_engine
    with pytest.raises(plait.InvalidArgumentError, match="unknown status 'done'"):
        await engine.executions(status="done")  # type: ignore[arg-type]
    with pytest.raises(plait.InvalidArgumentError, match="limit"):
        await engine.executions(limit=0)
    with pytest.raises(plait.InvalidArgumentError, match="limit"):
        await engine.executions(limit=1001)
    with pytest.raises(plait.InvalidArgumentError, match="cursor"):
        await engine.executions(after="yesterday")
    with pytest.raises(plait.InvalidArgumentError, match="cap"):
        await engine.execution_counts(cap=0)
    with pytest.raises(plait.UnknownExecutionError):
        await engine.timeline("0" * 32)
    # A name no store could hold matches nothing.
    assert (await engine.executions(workflow="a\0b")).executions == []


async def test_a_timeline_shows_attempts_deferreds_timers_and_the_end(
    plait_engine: plait.Engine, plait_clock: VirtualClock
) -> None:
    engine = plait_engine
    ok = await run_one(order("tl-ok", "ok"))
    timeline = await engine.timeline(ok)
    summary = (timeline.execution_id, timeline.workflow, timeline.status)
    assert summary == (ok, "LsOrder", "succeeded")
    assert timeline.payload == {"order_id": "tl-ok", "mode": "ok"}
    assert timeline.result == "ch_tl-ok"
    kinds = [(e.kind, e.name, e.attempt, e.outcome) for e in timeline.events]
    assert kinds == [
        ("started", "LsOrder", None, None),
        ("activity", "LsCharge", 1, "failure"),
        ("activity", "LsCharge", 2, "success"),
        ("completed", "LsOrder", None, "success"),
    ]
    failed_attempt = timeline.events[1]
    assert failed_attempt.error is not None
    assert failed_attempt.error["defect"]["message"] == "card network timed out"
    assert timeline.events[2].value == "ch_tl-ok"
    times = [e.at for e in timeline.events]
    assert all(at is not None for at in times)
    assert times == sorted(times)  # type: ignore[type-var]

    # Suspended on a durable clock: its timer is on the timeline, due in an hour.
    waiting = await run_one(order("tl-wait", "wait"))
    timeline = await engine.timeline(waiting)
    assert timeline.status == "suspended"
    timer = [e for e in timeline.events if e.kind == "timer"]
    assert [(e.name, e.outcome) for e in timer] == [("cool-off", "pending")]
    due = datetime.fromtimestamp(plait_clock.now_ms() / 1000, UTC) + timedelta(hours=1)
    assert timer[0].at is not None
    assert abs(timer[0].at - due) < timedelta(seconds=2)
    assert timeline.events[-1].kind == "suspended"

    # The clock fires, then the approval comes: both on the timeline, then the end.
    await plait_clock.advance(timedelta(hours=1, seconds=1))
    token = Approval.token_from_execution_id(LsOrder, waiting)
    for _ in range(2000):  # the wake-up runs the execution up to its wait on the approval
        if any(e.kind == "clock" for e in (await engine.timeline(waiting)).events):
            break
        await asyncio.sleep(0.002)
    assert await Approval.succeed(token, "ops")
    await poll_until(LsOrder, waiting, plait.Complete)
    timeline = await engine.timeline(waiting)
    events = [(e.kind, e.name, e.outcome) for e in timeline.events]
    assert events == [
        ("started", "LsOrder", None),
        ("clock", "cool-off", "success"),
        ("deferred", "LsApproval", "success"),
        ("completed", "LsOrder", "success"),
    ]
    assert timeline.events[2].value == "ops"
    assert timeline.result == "approved by ops"

    # Interrupted while it waits: the end says so.
    held = await run_one(order("tl-hold", "hold"))
    await LsOrder.interrupt(held)
    await poll_until(LsOrder, held, plait.Complete)
    timeline = await engine.timeline(held)
    assert timeline.status == "interrupted"
    assert timeline.events[-1].kind == "completed"
    assert timeline.events[-1].error == {"_tag": "Interrupt", "executionId": held}
    assert timeline.model_dump(mode="json")["events"][0]["kind"] == "started"
