"""A runner (or client-only) process for the workflow cluster tests, on the real PostgreSQL.

Usage: `python -m tests.workflow_cluster_worker <url> <prefix> <port> <dir> [<workflows>]`

Every process registers the workflow `WfcOrder`: three activity steps, a durable sleep on a
stored timer between the second and the third, then a deferred (`WfcApproval`) completed from
outside. Each step appends `<n> <step> <port> <start ns> <end ns>` to `<dir>/effects` with one
`write` once its body ran, so steps run again after a kill, and steps of one execution running
on two runners at once, show. Every 100 ms a runner writes what it sees of the cluster to
`<dir>/view-<port>.json` (as `tests/cluster_worker.py` does).

Port 0 is a client-only process. With `<workflows>` it waits for `<dir>/go`, starts that many
executions (all in flight, each awaited for its result), and completes each one's approval
by token after a random delay of up to 2 s (before or after the execution waits for it). It
appends `<n> <result>` per result to `<dir>/results` as each comes and writes `<dir>/done`
once all have. With `WFC_ACTION=interrupt` it instead starts one execution that waits
forever for its approval, writes `<dir>/started` with its id, waits for `<dir>/interrupt`,
interrupts it and writes the error its caller got to `<dir>/done`. With `WFC_ACTION=one` it
runs execution 0 and approves it once `<dir>/approve` exists; with `WFC_ACTION=scenarios`,
children, races and an interrupted parent (see `scenarios`); with `WFC_ACTION=queue` the
runners also run `WfcJobs` queue workers and the client runs `<workflows>` workflows that each
process one item (see `queued_workflows`).

It runs until SIGTERM (a graceful leave) or SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

from pydantic import BaseModel

import plait
from tests.cluster_worker import append, config

EFFECTS = ""
PORT = 0
STEP_SECONDS = float(os.environ.get("WFC_STEP_SECONDS", "0.02"))
SLEEP_SECONDS = float(os.environ.get("WFC_SLEEP_SECONDS", "0.3"))


class Order(BaseModel):
    n: int
    approve: bool = True


Approval: plait.DurableDeferred[int] = plait.DurableDeferred("WfcApproval", success=int)


@plait.activity(name="wfc_step")
async def step(n: int, which: int) -> int:
    start = time.time_ns()
    await asyncio.sleep(random.uniform(0, STEP_SECONDS))
    append(EFFECTS, f"{n} {which} {PORT} {start} {time.time_ns()}")
    return n * 10 + which


OrderFlow: plait.Workflow[Order, int] = plait.Workflow(
    "WfcOrder", payload=Order, success=int, idempotency_key=lambda o: str(o.n)
)


@OrderFlow.implement
async def order(payload: Order, execution_id: str) -> int:
    a = await step(payload.n, 1)
    b = await step(payload.n, 2)
    await plait.DurableClock.sleep("pause", SLEEP_SECONDS, in_memory_threshold=0)
    c = await step(payload.n, 3)
    approved = await Approval
    return a + b + c + approved


class Part(BaseModel):
    n: int


Rejection: plait.DurableDeferred[int] = plait.DurableDeferred("WfcRejection", success=int)

ChildFlow: plait.Workflow[Part, int] = plait.Workflow(
    "WfcChild", payload=Part, success=int, idempotency_key=lambda p: str(p.n)
)
ParentFlow: plait.Workflow[Part, int] = plait.Workflow(
    "WfcParent", payload=Part, success=int, idempotency_key=lambda p: str(p.n)
)
RaceFlow: plait.Workflow[Part, int] = plait.Workflow(
    "WfcRace", payload=Part, success=int, idempotency_key=lambda p: str(p.n)
)


@ChildFlow.implement
async def child(payload: Part, execution_id: str) -> int:
    value = await step(payload.n, 1)
    if payload.n < 0:  # waits for an approval that never comes (until interrupted)
        value += await Approval
    return value


@ParentFlow.implement
async def parent(payload: Part, execution_id: str) -> int:
    # The child's id (its own shard) mostly puts it on another runner than its parent.
    return await ChildFlow.execute(Part(n=payload.n)) + await step(-payload.n - 10_000, 2)


@RaceFlow.implement
async def race(payload: Part, execution_id: str) -> int:
    await step(payload.n, 1)
    winner: int = await plait.DurableDeferred.race_all(
        "verdict", [Approval, Rejection], success=int
    )
    return winner


class Job(BaseModel):
    n: int


Jobs: plait.DurableQueue[Job, int] = plait.DurableQueue(
    "WfcJobs", payload=Job, success=int, idempotency_key=lambda j: str(j.n)
)
QueuedFlow: plait.Workflow[Part, int] = plait.Workflow(
    "WfcQueued", payload=Part, success=int, idempotency_key=lambda p: str(p.n)
)


@QueuedFlow.implement
async def queued(payload: Part, execution_id: str) -> int:
    return await Jobs.process(Job(n=payload.n)) + 1


async def handle_job(job: Job) -> int:
    """A queue worker's handler: `<dir>/jobs` gets `<n> <port>` per run."""
    append(str(Path(EFFECTS).parent / "jobs"), f"{job.n} {PORT}")
    return job.n * 2


def expected(n: int) -> int:
    """The result of execution `n` (its approval is `n`)."""
    return (n * 10 + 1) + (n * 10 + 2) + (n * 10 + 3) + n


async def publish(runner: plait.Runner, out: Path, port: int) -> None:
    while True:
        view = runner.view()
        me = runner.address
        state = {
            "address": me,
            "shards": len(view.shards),
            "assigned": sum(owner == me for owner in view.assignments.values()),
            "releasing": len(view.releasing),
            "healthy": view.healthy_runners,
            "fenced": view.fenced_writes,
            "time": time.time(),
        }
        tmp = out / f"view-{port}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(out / f"view-{port}.json")
        await asyncio.sleep(0.1)


async def send(out: Path, workflows: int) -> None:
    while not (out / "go").exists():  # noqa: ASYNC110 - the test says when to begin
        await asyncio.sleep(0.05)
    results = str(out / "results")

    async def one(n: int) -> None:
        value = await OrderFlow.execute(Order(n=n))
        append(results, f"{n} {value}")

    async def approve(n: int) -> None:
        await asyncio.sleep(random.uniform(0, 2))
        token = Approval.token_from_payload(OrderFlow, Order(n=n))
        while True:
            try:
                await Approval.succeed(token, n)
                return
            except plait.DeferredTokenError:  # its start has not committed yet
                await asyncio.sleep(0.05)

    await asyncio.gather(
        *(one(n) for n in range(workflows)), *(approve(n) for n in range(workflows))
    )
    (out / "done").write_text("ok")


async def scenarios(out: Path) -> None:
    """Children, races and interrupts across runners; `<dir>/results` gets `<name> <value>`."""
    results = str(out / "results")

    async def parent_of(n: int) -> None:
        append(results, f"parent-{n} {await ParentFlow.execute(Part(n=n))}")

    async def race_of(n: int) -> None:
        caller = asyncio.ensure_future(RaceFlow.execute(Part(n=n)))
        token = Rejection.token_from_payload(RaceFlow, Part(n=n))
        await asyncio.sleep(random.uniform(0, 1))  # while it runs, or once it suspended
        while True:
            try:
                await Rejection.succeed(token, -n)
                break
            except plait.DeferredTokenError:  # its start has not committed yet
                await asyncio.sleep(0.05)
        append(results, f"race-{n} {await caller}")

    async def interrupted_parent() -> None:
        payload = Part(n=-1)
        caller = asyncio.ensure_future(ParentFlow.execute(payload))
        child_id = ChildFlow.execution_id(Part(n=-1))
        # Once the child waits for its approval (its step done), interrupt the parent.
        while await ChildFlow.poll(child_id) is None:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        await ParentFlow.interrupt(ParentFlow.execution_id(payload))
        try:
            await asyncio.wait_for(caller, 30)
            append(results, "interrupted-parent completed")
        except plait.Interrupted:
            append(results, "interrupted-parent Interrupted")
        for _ in range(600):
            polled = await ChildFlow.poll(child_id)
            if isinstance(polled, plait.Complete):
                append(results, f"interrupted-child {type(polled.exit).__name__}")
                return
            await asyncio.sleep(0.05)
        append(results, "interrupted-child still-waiting")

    await asyncio.gather(
        *(parent_of(n) for n in range(20)),
        *(race_of(n) for n in range(10)),
        interrupted_parent(),
    )
    (out / "done").write_text("ok")


async def one_approved_later(out: Path) -> None:
    """Execution 0, approved once `<dir>/approve` exists; its result in `<dir>/results`."""
    caller = asyncio.ensure_future(OrderFlow.execute(Order(n=0)))
    while not (out / "approve").exists():  # noqa: ASYNC110 - the test says when
        await asyncio.sleep(0.05)
    await Approval.succeed(Approval.token_from_payload(OrderFlow, Order(n=0)), 0)
    append(str(out / "results"), f"0 {await caller}")
    (out / "done").write_text("ok")


async def queued_workflows(out: Path, workflows: int) -> None:
    """Workflows whose items the runners' queue workers handle; `<n> <result>` per result."""
    results = str(out / "results")

    async def one(n: int) -> None:
        append(results, f"{n} {await QueuedFlow.execute(Part(n=n))}")

    await asyncio.gather(*(one(n) for n in range(workflows)))
    (out / "done").write_text("ok")


async def interrupt(out: Path, engine: plait.Engine) -> None:
    payload = Order(n=-1)
    caller = asyncio.ensure_future(OrderFlow.execute(payload))
    execution_id = OrderFlow.execution_id(payload)
    (out / "started").write_text(execution_id)
    while not (out / "interrupt").exists():  # noqa: ASYNC110 - the test says when
        await asyncio.sleep(0.05)
    # An operator's view from this process, which runs nothing: the stored executions.
    page = await engine.executions(workflow="WfcOrder", status="suspended")
    (out / "listed").write_text(" ".join(e.execution_id for e in page.executions))
    await OrderFlow.interrupt(execution_id)
    try:
        await asyncio.wait_for(caller, 30)
        outcome = "completed"
    except plait.Interrupted:
        outcome = "Interrupted"
    page = await engine.executions(workflow="WfcOrder", status="interrupted")
    (out / "listed-after").write_text(" ".join(e.execution_id for e in page.executions))
    (out / "done").write_text(outcome)


def _log_failure(task: asyncio.Task[None]) -> None:
    """An action that failed shows in the process's log (the test's log file)."""
    if not task.cancelled() and task.exception() is not None:
        logging.error("%s failed", task.get_name(), exc_info=task.exception())


async def main(url: str, prefix: str, port: int, out: Path, workflows: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with plait.Runner(url, config=config(port), prefix=prefix) as runner:
        tasks = []
        if port:
            tasks.append(asyncio.create_task(publish(runner, out, port)))
            if os.environ.get("WFC_ACTION") == "queue":
                worker = Jobs.worker(handle_job, concurrency=4, poll_interval=0.1)
                tasks.append(asyncio.create_task(worker.run()))
        elif os.environ.get("WFC_ACTION") == "interrupt":
            tasks.append(asyncio.create_task(interrupt(out, runner.engine)))
        elif os.environ.get("WFC_ACTION") == "one":
            tasks.append(asyncio.create_task(one_approved_later(out)))
        elif os.environ.get("WFC_ACTION") == "queue":
            tasks.append(asyncio.create_task(queued_workflows(out, workflows)))
        elif os.environ.get("WFC_ACTION") == "scenarios":
            tasks.append(asyncio.create_task(scenarios(out)))
        elif workflows:
            tasks.append(asyncio.create_task(send(out, workflows)))
        for task in tasks:
            task.add_done_callback(_log_failure)
        await stop.wait()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


if __name__ == "__main__":
    # Warnings (a lease lost, a commit retried) land in the test's log files.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    url, prefix, port_text, out_dir = sys.argv[1:5]
    workflows = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    PORT = int(port_text)
    EFFECTS = str(Path(out_dir) / "effects")
    asyncio.run(main(url, prefix, PORT, Path(out_dir), workflows))
