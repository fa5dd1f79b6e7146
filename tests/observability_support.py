"""Workflows, an entity and the SDK set-up of the observability tests.

Also run as a process of its own, recording its spans with the SDK in memory:

- `python -m tests.observability_support start <db>` starts an execution inside a host span on
  a SQLite file, waits until it suspends on a deferred, and prints its spans as JSON lines;
- `python -m tests.observability_support serve <url> <port> <metrics port> <dir>` runs a
  runner of `ObsTally` holding every shard (it touches `<dir>/ready`) until SIGTERM, then
  writes its spans to `<dir>/spans`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import plait
from tests.workflow_support import poll_until

Order: plait.Workflow[Any, str] = plait.Workflow("ObsOrder", payload={"order": str}, success=str)
Approval: plait.DurableDeferred[str] = plait.DurableDeferred("ObsApproval", success=str)
flaky_calls: dict[str, int] = {}


@plait.activity
async def obs_reserve(order: str) -> str:
    return f"reserved {order}"


@plait.activity
async def obs_flaky(order: str) -> str:
    flaky_calls[order] = flaky_calls.get(order, 0) + 1
    if flaky_calls[order] == 1:
        msg = "first attempt fails"
        raise RuntimeError(msg)
    return "ok"


@plait.activity
async def obs_ship(order: str, approver: str) -> str:
    return f"shipped {order} ({approver})"


@Order.implement
async def order_workflow(payload: Any, execution_id: str) -> str:
    await obs_reserve(payload.order)
    await plait.Activity.retry(obs_flaky(payload.order), times=2)
    approver = await Approval
    return await obs_ship(payload.order, approver)


Greeter: plait.Workflow[Any, str] = plait.Workflow("ObsGreeter", payload={"n": int}, success=str)


@plait.activity
async def obs_greet(n: int) -> str:
    return f"hello {n}"


@Greeter.implement
async def greeter(payload: Any, execution_id: str) -> str:
    return await obs_greet(payload.n)


class Add(BaseModel):
    by: int


Tally = plait.Entity("ObsTally")


@Tally.rpc()
async def add(ctx: plait.EntityContext[Any], body: Add) -> int:
    return body.by * 2


@Tally.rpc()
async def total(ctx: plait.EntityContext[Any], numbers: list[int]) -> int:
    """A payload that is a JSON array: what the handler sees is recorded."""
    seen.append(numbers)
    return sum(numbers)


@Tally.rpc()
async def ping(ctx: plait.EntityContext[Any]) -> str:
    """No payload at all (`null` on the wire)."""
    return "pong"


seen: list[object] = []

# One request at a time per instance: the rest wait in its mailbox until `gate` opens.
Queue = plait.Entity("ObsQueue")
gate: dict[str, asyncio.Event] = {}
holding: dict[str, asyncio.Event] = {}


@Queue.rpc()
async def hold(ctx: plait.EntityContext[Any], n: int) -> int:
    holding[ctx.entity_id].set()
    await gate[ctx.entity_id].wait()
    return n


def record_spans() -> InMemorySpanExporter:
    """The process's tracer provider: the SDK's, exporting to memory (set once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    """What the tests compare of a span."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent": None if span.parent is None else format(span.parent.span_id, "016x"),
        "attributes": dict(span.attributes or {}),
        "links": [format(link.context.span_id, "016x") for link in span.links],
    }


async def start(db: str) -> None:
    exporter = record_spans()
    host = trace.get_tracer("host")
    async with plait.Engine.sqlite(db):
        with host.start_as_current_span("host.request"):
            execution_id = await Order.execute({"order": "o-1"}, discard=True)
        await poll_until(Order, execution_id, plait.Suspended)
    for span in exporter.get_finished_spans():
        sys.stdout.write(json.dumps(as_dict(span)) + "\n")


async def serve(url: str, port: int, metrics_port: int, out: Path) -> None:
    """A runner of `ObsTally` until SIGTERM; then its spans, as JSON lines, in `out/spans`."""
    exporter = record_spans()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    config = plait.ShardingConfig(
        runner_address=plait.RunnerAddress(host="127.0.0.1", port=port),
        refresh_assignments_interval=timedelta(seconds=0.2),
    )
    async with plait.Runner(url, config=config, metrics_port=metrics_port) as runner:
        while len(runner.view().shards) < SHARDS:  # noqa: ASYNC110 - a runner holding every shard is ready
            await asyncio.sleep(0.05)
        (out / "ready").touch()
        await stop.wait()
    spans = "".join(json.dumps(as_dict(s)) + "\n" for s in exporter.get_finished_spans())
    (out / "spans").write_text(spans)


SHARDS = 300  # one group, the default


if __name__ == "__main__":
    if sys.argv[1] == "start":
        asyncio.run(start(sys.argv[2]))
    else:
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])))
