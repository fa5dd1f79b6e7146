"""One runner process of `benches/cluster_workflows.py`: runs workflows and starts its share.

Usage: `python -m benches.cluster_workflow_runner <url> <port> <dir> <index> <runners>
<workflows> <in_flight> [profile]`

It joins the cluster, writes `<dir>/view-<port>.json` (its shards, the ring's share for it, the
healthy runners) every 100 ms, waits for `<dir>/go`, then starts the workflows `n` with
`n % runners == index` (`BenchClusterThreeSteps`: three activities, x+1, x*2, x-1, the
idempotency key `n`), `in_flight` at a time, each awaited for its result, which it checks. Each
execution runs on the runner holding its execution id's shard, whichever runner started it. Then
it writes `<dir>/done-<port>.json`: when it began and ended, how many results it checked, and
the CPU seconds this process used meanwhile.
With `profile` it runs under cProfile (the event loop thread's CPU time) from `go` to its last
result and dumps the statistics to `<dir>/profile-<port>.pstats`. It leaves the cluster on SIGTERM.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

import plait
from benches.cluster_runner import publish


class Start(BaseModel):
    n: int


@plait.activity(name="bench_cluster_add_one")
async def add_one(x: int) -> int:
    return x + 1


@plait.activity(name="bench_cluster_double")
async def double(x: int) -> int:
    return x * 2


@plait.activity(name="bench_cluster_subtract_one")
async def subtract_one(x: int) -> int:
    return x - 1


ThreeSteps: plait.Workflow[Start, int] = plait.Workflow(
    "BenchClusterThreeSteps", payload=Start, success=int, idempotency_key=lambda s: str(s.n)
)


@ThreeSteps.implement
async def three_steps(payload: Start, execution_id: str) -> int:
    return await subtract_one(await double(await add_one(payload.n)))


def expected(n: int) -> int:
    return (n + 1) * 2 - 1


async def main(argv: list[str]) -> None:
    url, port_text, out_text, index_text, runners_text = argv[:5]
    workflows, in_flight = int(argv[5]), int(argv[6])
    profile = argv[7:8] == ["profile"]
    port, index, runners, out = int(port_text), int(index_text), int(runners_text), Path(out_text)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    config = plait.ShardingConfig(
        runner_address=plait.RunnerAddress(host="127.0.0.1", port=port),
        # As benches/cluster_runner.py and Effect's side: the ring is re-read every 0.5 s.
        refresh_assignments_interval=timedelta(seconds=0.5),
    )
    async with plait.Runner(url, config=config) as runner:
        publisher = asyncio.create_task(publish(runner, out, port))
        while not (out / "go").exists():  # noqa: ASYNC110 - the bench says when to begin
            await asyncio.sleep(0.02)
        mine = iter(range(index, workflows, runners))
        results = 0

        async def sender() -> None:
            nonlocal results
            for n in mine:
                result = await ThreeSteps.execute(Start(n=n))
                if result != expected(n):
                    raise AssertionError(f"workflow {n}: {result}, not {expected(n)}")
                results += 1

        # The event loop thread's CPU time, not the wall clock: on a machine shared with other
        # work a wall-clock profile charges the time the process waited for a CPU to whatever
        # function it was in.
        profiler = cProfile.Profile(time.thread_time) if profile else None
        if profiler is not None:
            profiler.enable()
        began, cpu = time.time(), time.process_time()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        ended, cpu = time.time(), time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(out / f"profile-{port}.pstats")
        done = {"began": began, "ended": ended, "results": results, "cpu": cpu}
        (out / f"done-{port}.json").write_text(json.dumps(done))
        await stop.wait()
        publisher.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
