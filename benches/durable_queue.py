"""Durable queue throughput: items/s through a queue, from offer to completion.

    .venv/bin/python -m benches.durable_queue [--count 5000] [--concurrency 64]
        [--backend sqlite|postgres]

For each backend, on a fresh database, one engine and one worker (`concurrency` handlers at
once, each returning at once) in the same process:

- enqueue: `count` items offered by plain code (`enqueue`, 1,000 at a time); the figure is
  from the first offer until the worker has marked the last one done.
- workflows: `count` executions of a workflow that processes one item each (`process`), started
  1,000 at a time; the figure is from the first start until the last execution completes (an
  offer, a suspension, a take, a completion of the item's deferred and a resumed run each).

Printed, not asserted: the figures depend on the machine (its speed is printed with them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time

from pydantic import BaseModel

import plait
from benches import machine
from benches.compare_dbos import POSTGRES_ADMIN
from benches.databases import database, usable_backends

CHUNK = 1_000


class Item(BaseModel):
    n: int


BenchItems = plait.DurableQueue(
    "BenchDurableQueueItems", payload=Item, success=int, idempotency_key=lambda i: str(i.n)
)
BenchProcess = plait.Workflow(
    "BenchDurableQueueProcess", payload=Item, success=int, idempotency_key=lambda i: str(i.n)
)


@BenchProcess.implement
async def bench_process(item: Item, execution_id: str) -> int:
    return await BenchItems.process(item)


@dataclasses.dataclass
class Outcome:
    backend: str
    shape: str
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


async def _measure(url: str, backend: str, count: int, concurrency: int) -> list[Outcome]:
    handled = 0
    everything = asyncio.Event()
    target = count

    async def handle(item: Item) -> int:
        nonlocal handled
        handled += 1
        if handled >= target:
            everything.set()
        return item.n + 1

    outcomes = []
    async with (
        plait.Engine.url(url),
        BenchItems.worker(handle, concurrency=concurrency, poll_interval=0.05),
    ):
        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            await asyncio.gather(
                *(BenchItems.enqueue(Item(n=n)) for n in range(first, min(first + CHUNK, count)))
            )
        await everything.wait()
        # The last handler returned; its done mark commits with the iteration's batch.
        await asyncio.sleep(0)
        outcomes.append(Outcome(backend, "enqueue", count, time.perf_counter() - started))

        handled, target = 0, count
        started = time.perf_counter()
        results: list[int] = []
        for first in range(count, 2 * count, CHUNK):
            chunk = range(first, min(first + CHUNK, 2 * count))
            results += await asyncio.gather(*(BenchProcess.execute(Item(n=n)) for n in chunk))
        seconds = time.perf_counter() - started
        if results != [n + 1 for n in range(count, 2 * count)]:
            msg = "a workflow got a wrong result"
            raise AssertionError(msg)
        outcomes.append(Outcome(backend, "workflows", count, seconds))
    return outcomes


def run(backend: str, count: int, concurrency: int) -> list[Outcome]:
    """Both measurements on a fresh database of `backend`."""
    with database(backend, POSTGRES_ADMIN) as url:
        return asyncio.run(_measure(url, backend, count, concurrency))


def report(outcomes: list[Outcome]) -> str:
    """A Markdown table of the figures."""
    lines = [
        "| backend | shape | items | seconds | items/s |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {o.backend} | {o.shape} | {o.count} | {o.seconds:.2f} | {o.per_second:,.0f} |"
        for o in outcomes
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    print(f"Machine speed: {machine.speed()}")
    outcomes = []
    for backend in usable_backends(args.backend, POSTGRES_ADMIN):
        outcomes += run(backend, args.count, args.concurrency)
    print(report(outcomes))


if __name__ == "__main__":
    main()
