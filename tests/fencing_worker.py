"""A worker process for the fencing tests: an engine on PostgreSQL whose lease is taken away.

Usage: `python -m tests.fencing_worker <url> <tag> <side-effect file> <results file> <n> [ttl]`
(`ttl`: the engine lease's, in seconds).

Starts `n` executions of a three-step workflow and waits for each. Every step appends
`<i> <step> <tag>` to the side-effect file before returning the token `<tag>:<i>:<step>`; a
workflow's result joins its three step results, so a result made of step results the store did
not keep is told apart from the stored one. Each caller's outcome goes to the results file as
`<i> <result>`, or `<i> !<exception class>` when the call failed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import plait

TAG = ""
SIDE_EFFECTS = ""


def append_line(path: str, line: str) -> None:
    """Appends one line with a single `write` (O_APPEND): whole lines even under SIGKILL."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def step(i: int, name: str) -> str:
    # Slow on the first engine, so that it has steps in flight when the second one takes over.
    await asyncio.sleep(random.uniform(0.1, 0.6) if TAG == "A" else random.uniform(0, 0.02))
    append_line(SIDE_EFFECTS, f"{i} {name} {TAG}")
    return f"{TAG}:{i}:{name}"


@plait.activity(name="First")
async def first(i: int) -> str:
    return await step(i, "First")


@plait.activity(name="Second")
async def second(i: int) -> str:
    return await step(i, "Second")


@plait.activity(name="Third")
async def third(i: int) -> str:
    return await step(i, "Third")


@plait.workflow(name="FenceSteps", idempotency_key=lambda p: str(p.i))
async def fence_steps(i: int) -> str:
    return "|".join([await first(i), await second(i), await third(i)])


async def call(i: int, results: str) -> None:
    try:
        outcome = await fence_steps.execute({"i": i})
    except Exception as err:
        outcome = f"!{type(err).__name__}"
    append_line(results, f"{i} {outcome}")


async def main(url: str, results: str, count: int, lease_ttl: float | None) -> None:
    async with plait.Engine.postgres(url, lease_ttl=lease_ttl):
        print("started", flush=True)
        await asyncio.gather(*(call(i, results) for i in range(count)))


if __name__ == "__main__":
    url, TAG, SIDE_EFFECTS, results_path, n = sys.argv[1:6]
    ttl = float(sys.argv[6]) if len(sys.argv) > 6 else None
    asyncio.run(main(url, results_path, int(n), ttl))
