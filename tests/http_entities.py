"""Entities the HTTP tests serve; `plait serve tests.http_entities` serves them (and the workflows).

- `HttpCounter`: durable state; `increment` is persisted with a primary key, fails with a
  declared error for a step over 1,000 and with a defect for a step of 13 (its defects are its
  replies: `disable_fatal_defects`); `get` and `reset` are volatile and take no payload;
  `echo` takes a plain int.
- `HttpGate`: one request at a time and room for one: `wait` holds its slot until the test
  lets it go (`open_gate`), so a second request finds the mailbox full; `hold` does the same
  as a persisted request keyed by its payload.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import plait
from tests.http_workflows import Hold, MessageNotificationWorkflow, ProcessOrder

__all__ = ["Counter", "Gate", "Hold", "MessageNotificationWorkflow", "ProcessOrder"]


class Increment(BaseModel):
    request_key: str
    by: int


class Tally(BaseModel):
    total: int = 0


class TooBig(plait.TaggedError):
    by: int
    limit: int


Counter = plait.Entity("HttpCounter", state=Tally, disable_fatal_defects=True)
runs: list[str] = []


@Counter.rpc(persisted=True, primary_key=lambda step: step.request_key, error=TooBig)
async def increment(ctx: plait.EntityContext[Tally], step: Increment) -> int:
    runs.append(step.request_key)
    if step.by > 1000:
        raise TooBig(by=step.by, limit=1000)
    if step.by == 13:
        raise RuntimeError("unlucky step")
    ctx.state.total += step.by
    return ctx.state.total


@Counter.rpc()
async def get(ctx: plait.EntityContext[Tally]) -> int:
    return ctx.state.total


@Counter.rpc()
async def reset(ctx: plait.EntityContext[Tally]) -> None:
    ctx.state = Tally()


@Counter.rpc()
async def echo(ctx: plait.EntityContext[Tally], n: int) -> int:
    return n


Gate = plait.Entity("HttpGate", mailbox_capacity=1)
_gates: dict[str, asyncio.Event] = {}


def open_gate(key: str) -> None:
    """Lets the `wait` requests for `key` finish."""
    _gates.setdefault(key, asyncio.Event()).set()


@Gate.rpc()
async def wait(ctx: plait.EntityContext[None], key: str) -> str:
    await _gates.setdefault(key, asyncio.Event()).wait()
    return f"{ctx.entity_id}:{key}"


gate_runs: list[str] = []


@Gate.rpc(persisted=True, primary_key=lambda key: key)
async def hold(ctx: plait.EntityContext[None], key: str) -> str:
    gate_runs.append(key)
    await _gates.setdefault(key, asyncio.Event()).wait()
    return f"{ctx.entity_id}:{key}"
