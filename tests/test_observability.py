"""Observability: spans recorded by the OpenTelemetry SDK in memory, metrics scraped live.

The SDK's tracer provider is set once for the test process (OpenTelemetry allows one); each
test reads the spans its own work finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import plait
from plait.http import proxy_app
from plait.observability import enable_metrics, tracing
from plait.observability.logs import fields
from plait.observability.metrics import EngineGauges
from tests.http_support import free_port, live_proxy
from tests.observability_support import (
    Add,
    Approval,
    Greeter,
    Order,
    add,
    as_dict,
    gate,
    hold,
    holding,
    ping,
    record_spans,
    seen,
    total,
)
from tests.workflow_support import poll_until

ROOT = Path(__file__).resolve().parent.parent
_exporter: InMemorySpanExporter | None = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter, emptied for the test."""
    global _exporter
    if _exporter is None:
        _exporter = record_spans()
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def named(exporter: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    return [as_dict(s) for s in exporter.get_finished_spans() if s.name == name]


async def test_a_workflow_s_spans_form_one_tree_under_the_host_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    host = trace.get_tracer("host")
    async with plait.Engine.sqlite(str(tmp_path / "db.sqlite")):
        with host.start_as_current_span("host.request"):
            execution_id = await Order.execute({"order": "o-tree"}, discard=True)
        token = Approval.token_from_execution_id(Order, execution_id)
        await poll_until(Order, execution_id, plait.Suspended)
        with host.start_as_current_span("webhook"):
            assert await Approval.succeed(token, "ada")
        assert await Order.execute({"order": "o-tree"}) == "shipped o-tree (ada)"

    [request] = named(spans, "host.request")
    [start] = named(spans, "plait.workflow.start")
    runs = named(spans, "plait.workflow.run")
    trace_id = request["trace_id"]
    assert start["parent"] == request["span_id"]
    assert start["attributes"] == {"plait.workflow": "ObsOrder", "plait.execution_id": execution_id}
    # A first run that suspends on the deferred, a second that the completion wakes.
    assert [r["attributes"]["plait.outcome"] for r in runs] == ["suspended", "success"]
    assert [r["attributes"]["plait.attempt"] for r in runs] == [1, 2]
    assert {r["parent"] for r in runs} == {start["span_id"]}
    assert {
        s["trace_id"]
        for s in map(as_dict, spans.get_finished_spans())
        if s["name"].startswith("plait.")
        and s["name"] not in {"plait.store.commit", "plait.deferred.complete"}
    } == {trace_id}
    activities = named(spans, "plait.activity")
    # The replay of the second run runs nothing again: a span for each attempt run.
    assert [
        (
            a["attributes"]["plait.activity"],
            a["attributes"]["plait.attempt"],
            a["attributes"]["plait.outcome"],
        )
        for a in activities
    ] == [
        ("obs_reserve", 1, "success"),
        ("obs_flaky", 1, "failure"),
        ("obs_flaky", 2, "success"),
        ("obs_ship", 1, "success"),
    ]
    assert [a["parent"] for a in activities] == [runs[0]["span_id"]] * 3 + [runs[1]["span_id"]]
    [wait] = named(spans, "plait.deferred.wait")
    assert wait["parent"] == runs[0]["span_id"]
    assert wait["attributes"]["plait.deferred"] == "ObsApproval"
    assert wait["attributes"]["plait.outcome"] == "suspended"
    # The webhook's trace leads to the execution's start, and back.
    [webhook] = named(spans, "webhook")
    [complete] = named(spans, "plait.deferred.complete")
    assert complete["parent"] == webhook["span_id"]
    assert complete["links"] == [start["span_id"]]
    assert complete["attributes"]["plait.outcome"] == "completed"
    commits = named(spans, "plait.store.commit")
    assert commits
    assert all(c["parent"] is None for c in commits)
    assert sum(c["attributes"]["plait.store.ops"] for c in commits) >= 6


async def test_a_durable_sleep_is_a_span_until_the_run_suspends(
    spans: InMemorySpanExporter, plait_clock: plait.testing.VirtualClock
) -> None:
    Napper: plait.Workflow[Any, str] = plait.Workflow("ObsNapper", payload={"n": int}, success=str)

    @Napper.implement
    async def nap(payload: Any, execution_id: str) -> str:
        await plait.DurableClock.sleep("nap", 3600)
        return "rested"

    async with plait.Engine.memory(clock=plait_clock):
        execution_id = await Napper.execute({"n": 1}, discard=True)
        await poll_until(Napper, execution_id, plait.Suspended)
        await plait_clock.advance(3601)
        assert await Napper.execute({"n": 1}) == "rested"
    [sleep] = named(spans, "plait.sleep")
    assert sleep["attributes"]["plait.sleep"] == "DurableClock/nap"
    assert sleep["attributes"]["plait.sleep.seconds"] == 3600
    assert sleep["attributes"]["plait.outcome"] == "suspended"
    first_run = named(spans, "plait.workflow.run")[0]
    assert sleep["parent"] == first_run["span_id"]


async def test_a_resume_in_another_process_continues_the_trace(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    db = str(tmp_path / "db.sqlite")
    started = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.observability_support",
        "start",
        db,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT)])},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(started.communicate(), 60)
    assert started.returncode == 0
    theirs = [json.loads(line) for line in out.decode().splitlines()]
    [request] = [s for s in theirs if s["name"] == "host.request"]
    [start] = [s for s in theirs if s["name"] == "plait.workflow.start"]
    assert start["parent"] == request["span_id"]

    async with plait.Engine.sqlite(db) as engine:
        execution_id = Order.execution_id({"order": "o-1"})
        assert await Approval.succeed(Approval.token_from_execution_id(Order, execution_id), "bo")
        assert await Order.execute({"order": "o-1"}) == "shipped o-1 (bo)"
        # What the dashboard and the listings show of the payload is the workflow's own.
        timeline = await engine.timeline(execution_id)
    assert timeline.payload == {"order": "o-1"}
    [run] = named(spans, "plait.workflow.run")
    # This process never saw the start: the run's parent is the span stored with the payload.
    assert run["trace_id"] == request["trace_id"]
    assert run["parent"] == start["span_id"]
    # The completion here links to the start there.
    [complete] = named(spans, "plait.deferred.complete")
    assert complete["links"] == [start["span_id"]]
    [ship] = named(spans, "plait.activity")
    assert ship["attributes"]["plait.activity"] == "obs_ship"
    assert ship["parent"] == run["span_id"]


async def test_an_entity_request_is_one_trace_from_caller_to_handler(
    spans: InMemorySpanExporter,
) -> None:
    host = trace.get_tracer("host")
    async with plait.Engine.memory():
        with host.start_as_current_span("host.request"):
            assert await add.call("t-1", Add(by=21)) == 42
    [request] = named(spans, "host.request")
    [send] = named(spans, "plait.entity.send")
    [handle] = named(spans, "plait.entity.handle")
    assert send["parent"] == request["span_id"]
    assert handle["parent"] == send["span_id"]
    assert handle["trace_id"] == request["trace_id"]
    assert send["attributes"] == {
        "plait.entity": "ObsTally",
        "plait.entity_id": "t-1",
        "plait.rpc": "add",
        "plait.persisted": False,
        "plait.outcome": "success",
    }
    assert handle["attributes"]["plait.outcome"] == "success"


def test_the_trace_key_leaves_the_payload_as_it_was() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for payload in (b'{"a":1,"b":[2]}', b"{}", b"{ }"):
        carried = tracing.with_trace(payload, traceparent)
        assert json.loads(carried)[tracing.TRACE_KEY] == traceparent
        stripped, found = tracing.split_trace(carried)
        assert found == traceparent
        assert json.loads(stripped) == json.loads(payload)
    # A payload that is not an object is wrapped, and comes back byte for byte.
    for payload in (b"[1,{}]", b"null", b"3", b'"s"', b"[]"):
        carried = tracing.with_trace(payload, traceparent)
        assert json.loads(carried) == {
            tracing.WRAPPED_KEY: traceparent,
            tracing.VALUE_KEY: json.loads(payload),
        }
        assert tracing.split_trace(carried) == (payload, traceparent)
    # Rows stored before, and without tracing, pass through untouched; so does an object whose
    # first key only looks like the wrapping's.
    for payload in (b'{"a":1}', b"[1]", b"null", b'{"~plait/value":1}'):
        assert tracing.split_trace(payload) == (payload, None)
        assert tracing.with_trace(payload, None) == payload


def test_log_fields_carry_the_current_trace_ids(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("host").start_as_current_span("host.request") as span:
        extra = fields(execution_id="e-1", workflow="W", activity=None)
    ctx = span.get_span_context()
    assert extra == {
        "plait_execution_id": "e-1",
        "plait_workflow": "W",
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
    }
    record = logging.LogRecord("plait", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__.update(extra)
    assert record.plait_execution_id == "e-1"  # type: ignore[attr-defined]


async def test_metrics_scraped_from_a_live_proxy_count_a_known_workload(
    plait_clock: plait.testing.VirtualClock,
) -> None:
    counters = enable_metrics()

    def value(name: str, **labels: str) -> float:
        return counters.value(name, labels) or 0.0

    before = (
        value("plait_executions_started_total", workflow="ObsGreeter"),
        value("plait_executions_completed_total", workflow="ObsGreeter"),
        value("plait_activity_duration_seconds_count", activity="obs_greet", outcome="success"),
        value("plait_entity_messages_total", entity="ObsTally", rpc="add", outcome="success"),
    )
    engine = plait.Engine.memory(clock=plait_clock)
    app = proxy_app([Greeter], engine=engine)
    async with live_proxy(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for n in range(3):
            assert (await client.post("/obsgreeter", json={"n": n})).status_code == 200
        for n in range(2):
            assert await add.call(f"t-{n}", Add(by=n), engine=engine) == 2 * n
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['plait_executions_started_total{workflow="ObsGreeter"}'] == before[0] + 3
    assert samples['plait_executions_completed_total{workflow="ObsGreeter"}'] == before[1] + 3
    assert (
        samples['plait_activity_duration_seconds_count{activity="obs_greet",outcome="success"}']
        == before[2] + 3
    )
    assert (
        samples['plait_entity_messages_total{entity="ObsTally",outcome="success",rpc="add"}']
        == before[3] + 2
    )
    assert samples["plait_workflow_runs_active"] == 0


async def test_an_entity_payload_that_is_not_an_object_carries_the_trace(
    spans: InMemorySpanExporter,
) -> None:
    host = trace.get_tracer("host")
    seen.clear()
    async with plait.Engine.memory():
        with host.start_as_current_span("host.request"):
            assert await total.call("t-list", [1, 2, 3]) == 6
            assert await ping.call("t-list") == "pong"
    [request] = named(spans, "host.request")
    sends = named(spans, "plait.entity.send")
    handles = named(spans, "plait.entity.handle")
    assert [s["attributes"]["plait.rpc"] for s in sends] == ["total", "ping"]
    assert [h["parent"] for h in handles] == [s["span_id"] for s in sends]
    assert {h["trace_id"] for h in handles} == {request["trace_id"]}
    # The handler saw the array as sent, not the wrapping that carried the trace.
    assert seen == [[1, 2, 3]]


async def test_a_workflow_under_a_span_not_sampled_records_no_span_of_its_own(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    )
    async with plait.Engine.sqlite(str(tmp_path / "db.sqlite")) as engine:
        token = otel_context.attach(trace.set_span_in_context(unsampled))
        try:
            assert await Greeter.execute({"n": 7}) == "hello 7"
            assert await add.call("t-unsampled", Add(by=1)) == 2
        finally:
            otel_context.detach(token)
        timeline = await engine.timeline(Greeter.execution_id({"n": 7}))
    # The sampler decided where the trace began: nothing under it is recorded (the commit
    # batches start traces of their own).
    assert {s.name for s in spans.get_finished_spans()} == {"plait.store.commit"}
    assert timeline.payload == {"n": 7}


async def test_the_mailbox_depth_and_suspended_gauges_after_a_known_workload(
    plait_clock: plait.testing.VirtualClock,
) -> None:
    enable_metrics()
    engine = plait.Engine.memory(clock=plait_clock)
    app = proxy_app([Order], engine=engine)
    gate["q-1"], holding["q-1"] = asyncio.Event(), asyncio.Event()

    def sample(text: str, name: str) -> float | None:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    async with live_proxy(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        # Two executions suspended on their approval.
        for order in ("o-gauge-1", "o-gauge-2"):
            execution_id = await Order.execute({"order": order}, discard=True, engine=engine)
            await poll_until(Order, execution_id, plait.Suspended, engine=engine)
        # Three requests to one instance that runs one at a time: one runs, two wait.
        calls = [asyncio.ensure_future(hold.call("q-1", n, engine=engine)) for n in range(3)]
        await asyncio.wait_for(holding["q-1"].wait(), 10)
        scraped = (await client.get("/metrics")).text
        gate["q-1"].set()
        assert await asyncio.gather(*calls) == [0, 1, 2]
        after = (await client.get("/metrics")).text
    assert sample(scraped, 'plait_entity_mailbox_depth{entity="ObsQueue"}') == 2
    assert sample(scraped, "plait_executions_suspended_stored") == 2
    # The depth is read at each scrape; the count of the store is kept a while.
    assert sample(after, 'plait_entity_mailbox_depth{entity="ObsQueue"}') == 0


async def test_the_suspended_count_is_read_once_however_often_scraped(tmp_path: Path) -> None:
    reads: list[int] = []
    async with plait.Engine.sqlite(str(tmp_path / "db.sqlite")) as engine:
        execution_id = await Order.execute({"order": "o-count"}, discard=True)
        await poll_until(Order, execution_id, plait.Suspended)

        async def count(cap: int) -> int:
            reads.append(cap)
            return (await engine.execution_counts(cap=cap))["suspended"]

        gauges = EngineGauges(asyncio.get_running_loop(), list, count)
        # Scrapes from other threads (a metrics port) at once, then one on the loop.
        scraped = await asyncio.gather(*(asyncio.to_thread(gauges.suspended) for _ in range(4)))
        await gauges.refresh()
        assert gauges.suspended() == 1
    assert scraped == [1, 1, 1, 1]
    assert reads == [10_000]


async def test_an_entity_request_to_another_runner_continues_the_caller_s_trace(
    spans: InMemorySpanExporter, postgres_url: str, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    log = (tmp_path / "log").open("wb")
    runner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.observability_support",
        "serve",
        postgres_url,
        str(port),
        str(metrics_port),
        str(tmp_path),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT)])},
        stdout=log,
        stderr=log,
    )
    try:
        await poll_file(tmp_path / "ready", runner)
        # A client-only process: every request goes to the runner over the runners' transport.
        client = plait.Runner(postgres_url, config=plait.ShardingConfig(runner_address=None))
        async with client, httpx.AsyncClient() as http:
            with trace.get_tracer("host").start_as_current_span("host.request"):
                assert await add.call("t-remote", Add(by=5), engine=client.engine) == 10
            scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        runner.send_signal(signal.SIGTERM)
        await asyncio.wait_for(runner.wait(), 30)
        log.close()
    assert runner.returncode == 0, (tmp_path / "log").read_text()
    theirs = [json.loads(line) for line in (tmp_path / "spans").read_text().splitlines()]
    [request] = named(spans, "host.request")
    [send] = named(spans, "plait.entity.send")
    [handle] = [s for s in theirs if s["name"] == "plait.entity.handle"]
    assert send["parent"] == request["span_id"]
    assert handle["trace_id"] == request["trace_id"]
    assert handle["parent"] == send["span_id"]
    assert handle["attributes"]["plait.entity_id"] == "t-remote"
    assert handle["attributes"]["plait.outcome"] == "success"
    # The runner's metrics port: Effect's cluster gauges and the request it handled.
    runner_label = f'runner="127.0.0.1:{port}"'
    assert f"plait_cluster_shards{{{runner_label}}} 300.0" in scraped
    assert f"plait_cluster_runners_healthy{{{runner_label}}} 1.0" in scraped
    assert 'plait_entity_messages_total{entity="ObsTally",outcome="success",rpc="add"} 1.0' in (
        scraped
    )
    # The gauges read at scrape time, from the port's thread: the mailbox drained, and the
    # count the thread waited for the runner's loop to read from its fresh database.
    assert 'plait_entity_mailbox_depth{entity="ObsTally"} 0.0' in scraped
    assert "plait_executions_suspended_stored 0.0" in scraped


async def poll_file(path: Path, process: asyncio.subprocess.Process) -> None:
    """Waits until `path` exists, failing if `process` exits first."""
    for _ in range(6000):
        if path.exists():  # noqa: ASYNC240 - a stat every 10 ms
            return
        assert process.returncode is None, "the runner exited"
        await asyncio.sleep(0.01)
    msg = f"{path} never came"
    raise AssertionError(msg)
