"""Durable queues: a workflow's items run by workers, results and failures back, each item once
per key, bounded concurrency, plain `enqueue`, and at-least-once delivery across a SIGKILL.

Each test runs on every backend (memory, a SQLite file, a PostgreSQL database); the crash test
on the two durable ones, with real worker processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

import plait
from tests.workflow_support import EngineFactory

REPO = Path(__file__).resolve().parent.parent


class Job(BaseModel):
    key: str
    n: int = 0


class Declined(plait.TaggedError):
    reason: str


Jobs = plait.DurableQueue(
    "dq_Jobs", payload=Job, success=int, error=Declined, idempotency_key=lambda j: j.key
)

Process = plait.Workflow("dq_Process", payload=Job, success=str, idempotency_key=lambda j: j.key)


@Process.implement
async def process(job: Job, execution_id: str) -> str:
    try:
        doubled = await Jobs.process(job)
    except Declined as err:
        return f"declined: {err.reason}"
    # The same key again in this execution is the same item: its result, no second run.
    again = await Jobs.process(Job(key=job.key, n=999))
    return f"{doubled}/{again}"


class Handler:
    """A handler that records what it ran and how many ran at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runs: Counter[str] = Counter()
        self.running = 0
        self.most = 0

    async def __call__(self, job: Job) -> int:
        self.runs[job.key] += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            if job.key.startswith("decline"):
                raise Declined(reason=f"no funds for {job.key}")
            if job.key.startswith("crash"):
                msg = f"bug on {job.key}"
                raise RuntimeError(msg)
            return job.n * 2
        finally:
            self.running -= 1


async def wait_until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_workflow_suspends_until_a_worker_completes_its_item(
    make_engine: EngineFactory,
) -> None:
    handler = Handler()
    async with make_engine():
        execution_id = await Process.execute(Job(key="a", n=21), discard=True)
        await asyncio.sleep(0.2)
        # No worker yet: the execution waits on the item's deferred.
        assert isinstance(await Process.poll(execution_id), plait.Suspended | None)
        assert handler.runs == {}
        async with Jobs.worker(handler, poll_interval=0.05):
            assert await Process.execute(Job(key="a", n=21)) == "42/42"
        assert handler.runs == {"a": 1}


async def test_item_ids_and_deferred_names_are_effects(make_engine: EngineFactory) -> None:
    async with make_engine() as engine, Jobs.worker(Handler()):
        execution_id = await Process.execute(Job(key="e", n=1), discard=True)
        assert await Process.execute(Job(key="e", n=1)) == "2/2"
        assert engine.journal is not None
        history = await engine.journal.history(execution_id)
    assert history is not None
    # Effect's DurableQueue.process: id = Activity.idempotencyKey("DurableQueue/<name>/<key>"),
    # deferred "DurableQueue/<name>/<id>".
    item_id = plait.activity_idempotency_key(execution_id, "DurableQueue/dq_Jobs/e")
    assert [d.name for d in history.deferreds] == [f"DurableQueue/dq_Jobs/{item_id}"]
    assert Jobs.item_id({"key": "e"}) == plait.execution_id("DurableQueue/dq_Jobs", "e")


async def test_a_handler_failure_is_raised_where_the_item_is_processed(
    make_engine: EngineFactory,
) -> None:
    handler = Handler()
    async with make_engine(), Jobs.worker(handler, concurrency=2):
        assert await Process.execute(Job(key="decline-1")) == "declined: no funds for decline-1"
        # Not a declared error: a defect, which fails the workflow.
        with pytest.raises(plait.Defect) as failed:
            await Process.execute(Job(key="crash-1"))
        assert failed.value.type_name == "RuntimeError"
        assert "bug on crash-1" in failed.value.message
    assert handler.runs == {"decline-1": 1, "crash-1": 1}


async def test_an_item_is_offered_once_per_key(make_engine: EngineFactory) -> None:
    handler = Handler()
    async with make_engine() as engine:
        first = await Jobs.enqueue(Job(key="k", n=1))
        second = await Jobs.enqueue({"key": "k", "n": 2})
        other = await Jobs.enqueue(Job(key="other"))
        assert first == second == Jobs.item_id({"key": "k"}) != other
        async with Jobs.worker(handler, poll_interval=0.05):
            await wait_until(lambda: handler.runs == {"k": 1, "other": 1})
            await asyncio.sleep(0.3)
            # Done items are never taken again, nor offered again.
            assert await Jobs.enqueue(Job(key="k")) == first
            await asyncio.sleep(0.3)
        assert handler.runs == {"k": 1, "other": 1}
        # Workflows: one item per execution and key, however often it is processed.
        async with Jobs.worker(handler):
            results = await asyncio.gather(
                *(Process.execute(Job(key=f"w{n}", n=n)) for n in range(5))
            )
        assert results == [f"{2 * n}/{2 * n}" for n in range(5)]
        assert all(handler.runs[f"w{n}"] == 1 for n in range(5))
        assert engine.running


async def test_concurrency_is_bounded_per_worker(make_engine: EngineFactory) -> None:
    handler = Handler(delay=0.03)
    async with make_engine():
        for n in range(24):
            await Jobs.enqueue(Job(key=f"c{n}", n=n))
        async with Jobs.worker(handler, concurrency=3, poll_interval=0.05):
            await wait_until(lambda: len(handler.runs) == 24)
            await wait_until(lambda: handler.running == 0)
    assert handler.most == 3  # never more, and reached
    assert set(handler.runs.values()) == {1}


async def test_a_worker_in_this_process_is_woken_by_an_offer_at_once(
    make_engine: EngineFactory,
) -> None:
    handler = Handler()
    async with make_engine(), Jobs.worker(handler, poll_interval=30):
        await asyncio.sleep(0.1)  # the worker's first take found nothing: it waits
        started = time.monotonic()
        await Jobs.enqueue(Job(key="now"))
        await wait_until(lambda: handler.runs == {"now": 1}, within=5)
        assert time.monotonic() - started < 2


async def test_wrong_payloads_and_names_are_typed_errors(make_engine: EngineFactory) -> None:
    async with make_engine():
        with pytest.raises(plait.QueuePayloadError) as bad:
            await Jobs.enqueue({"key": "x", "n": "not a number"})
        assert bad.value.queue == "dq_Jobs"
        assert bad.value.errors[0]["loc"] == ("n",)
        assert isinstance(bad.value, plait.PlaitError)
        with pytest.raises(plait.NotInWorkflowError):
            await Jobs.process(Job(key="x"))
    assert plait.DurableQueue.named("dq_Jobs") is Jobs
    with pytest.raises(plait.UnknownQueueError):
        plait.DurableQueue.named("dq_nope")
    with pytest.raises(plait.InvalidArgumentError):
        Jobs.worker(Handler(), concurrency=0)


async def test_a_handler_longer_than_the_claim_timeout_keeps_its_item(
    make_engine: EngineFactory,
) -> None:
    """Its worker renews the claim: another worker never takes the item meanwhile."""
    handler = Handler(delay=1.0)
    async with make_engine():
        await Jobs.enqueue(Job(key="long"))
        first = Jobs.worker(handler, claim_timeout=0.2, poll_interval=0.02)
        second = Jobs.worker(handler, claim_timeout=0.2, poll_interval=0.02)
        async with first, second:
            await wait_until(lambda: handler.runs == {"long": 1})
            await wait_until(lambda: handler.running == 0)
            await asyncio.sleep(0.3)
    assert handler.runs == {"long": 1}
    assert handler.most == 1


async def test_a_stopping_worker_lets_the_handlers_in_hand_finish(
    make_engine: EngineFactory,
) -> None:
    handler = Handler(delay=0.3)
    async with make_engine():
        await Jobs.enqueue(Job(key="slow"))
        async with Jobs.worker(handler, shutdown_timeout=5):
            await wait_until(lambda: handler.running == 1)
        # Finished and completed: a later worker has nothing to take.
        assert handler.runs == {"slow": 1}
        assert handler.running == 0
        async with Jobs.worker(handler, claim_timeout=0.01, poll_interval=0.01):
            await asyncio.sleep(0.2)
        assert handler.runs == {"slow": 1}


async def test_a_stopped_worker_releases_the_items_it_gave_up(make_engine: EngineFactory) -> None:
    handler = Handler(delay=30)
    async with make_engine():
        await Jobs.enqueue(Job(key="given-up"))
        async with Jobs.worker(handler, shutdown_timeout=0.05):
            await wait_until(lambda: handler.running == 1)
        assert handler.running == 0  # cancelled
        handler.delay = 0
        started = time.monotonic()
        # Its claim (60 s by default) was voided: taken again at once.
        async with Jobs.worker(handler, poll_interval=0.02):
            await wait_until(lambda: handler.runs == {"given-up": 2}, within=5)
        assert time.monotonic() - started < 5


async def test_a_sync_handler_runs_off_the_loop(make_engine: EngineFactory) -> None:
    seen: list[str] = []

    def handle(job: Job) -> int:
        seen.append(job.key)
        return 7

    async with make_engine(), Jobs.worker(handle):
        assert await Process.execute(Job(key="sync", n=0)) == "7/7"
    assert seen == ["sync"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_killed_worker_process_leaves_its_item_to_be_taken_again(
    backend: str, new_database_url: object, tmp_path: Path
) -> None:
    """SIGKILL mid-item: the item runs at most once more; every workflow gets one result."""
    assert callable(new_database_url)
    url = new_database_url()
    effects = tmp_path / "effects.txt"
    workflows = 24
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'python'}{os.pathsep}{REPO}"}

    def worker(mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.dq_crash_worker",
                url,
                str(effects),
                str(workflows),
                mode,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    def lines() -> list[str]:
        return effects.read_text().splitlines() if effects.exists() else []

    first = worker("start")
    try:
        deadline = time.monotonic() + 60
        # Killed while `o3` runs (its handler sleeps a minute in this process) and others
        # are done.
        while not ("start o3" in lines() and sum(ln.startswith("done") for ln in lines()) >= 6):
            assert first.poll() is None, "the worker process ended"
            assert time.monotonic() < deadline, lines()
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        if first.stdout is not None:
            first.stdout.close()
    assert "done o3" not in lines()

    second = worker("resume")
    output, _ = second.communicate(timeout=90)
    assert second.returncode == 0, output
    results = [ln.removeprefix("result ") for ln in output.splitlines() if ln.startswith("result")]
    assert results == [f"o{n}:receipt-o{n}" for n in range(workflows)]

    runs = Counter(ln.split()[1] for ln in lines() if ln.startswith("start"))
    assert set(runs) == {f"o{n}" for n in range(workflows)}
    # Every item ran at most once more; only those in hand at the kill (at most the worker's
    # concurrency) ran again: an item marked done is never taken again.
    assert max(runs.values()) <= 2, runs
    again = {key for key, count in runs.items() if count == 2}
    assert "o3" in again
    assert len(again) <= 4, again
