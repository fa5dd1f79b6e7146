"""A worker process for the crash tests: runs workflows whose steps append to a file.

Usage: `python -m tests.crash_worker <database url> <side-effect file> <results file> <count>`

Starts (or, after a crash, joins) `count` executions of a three-step workflow and writes one
line per result. Every step appends `<i> <step>` to the side-effect file *before* returning,
so a kill between the side effect and its journal write shows up as a repeated line.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import plait

SIDE_EFFECTS = ""


def record(line: str) -> None:
    """Appends one line with a single `write` (O_APPEND): whole lines even under SIGKILL."""
    fd = os.open(SIDE_EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@plait.activity(name="AddOne")
async def add_one(i: int, x: int) -> int:
    await asyncio.sleep(random.uniform(0, 0.02))
    record(f"{i} AddOne")
    return x + 1


@plait.activity(name="Double")
def double(i: int, x: int) -> int:
    record(f"{i} Double")
    return x * 2


@plait.activity(name="SubtractOne")
async def subtract_one(i: int, x: int) -> int:
    await asyncio.sleep(random.uniform(0, 0.02))
    record(f"{i} SubtractOne")
    return x - 1


@plait.workflow(name="CrashSteps", idempotency_key=lambda p: str(p.i))
async def crash_steps(i: int) -> int:
    return await subtract_one(i, await double(i, await add_one(i, i)))


async def main(url: str, results: str, count: int) -> None:
    engine = plait.Engine.url(url)
    async with engine:
        ids = await asyncio.gather(
            *(crash_steps.execute({"i": i}, discard=True) for i in range(count))
        )
        print(f"started {len(ids)}", flush=True)

        async def finish(i: int) -> None:
            value = await crash_steps.execute({"i": i})
            fd = os.open(results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{i} {value}\n".encode())
            finally:
                os.close(fd)

        await asyncio.gather(*(finish(i) for i in range(count)))
        print("done", flush=True)


if __name__ == "__main__":
    url, SIDE_EFFECTS, results_path, n = sys.argv[1:5]
    asyncio.run(main(url, results_path, int(n)))
