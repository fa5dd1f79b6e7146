"""One runner process of `benches/cluster.py`: serves the counter entity and sends its share.

Usage: `python -m benches.cluster_runner <url> <port> <dir> <index> <runners> <requests>
<in_flight> <entities> [volatile]`

It joins the cluster, writes `<dir>/view-<port>.json` (its shards, the ring's share for it, the
healthy runners) every 100 ms, waits for `<dir>/go`, then sends the requests `n` with
`n % runners == index` (persisted, a unique primary key each, to entity `n % entities`),
`in_flight` at a time, and writes `<dir>/done-<port>.json`: when it began and ended, and how
many replies it checked. With `volatile` the requests are volatile `BenchClusterEcho.echo`
calls instead (never stored: those for another runner's entities go to it over the runners'
transport). It leaves the cluster on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

import plait


class Add(BaseModel):
    key: str
    by: int


class Count(BaseModel):
    total: int = 0


Counter = plait.Entity("BenchClusterCounter", state=Count)


@Counter.rpc(persisted=True, primary_key=lambda add: add.key)
async def add(ctx: plait.EntityContext[Count], payload: Add) -> int:
    ctx.state.total += payload.by
    return ctx.state.total


Echo = plait.Entity("BenchClusterEcho")


@Echo.rpc()
async def echo(ctx: plait.EntityContext, n: int) -> int:
    return n + 1


async def publish(runner: plait.Runner, out: Path, port: int) -> None:
    """Writes what `runner` sees of the ring to `<out>/view-<port>.json` every 100 ms (the
    bench waits on it until every shard is held)."""
    while True:
        view = runner.view()
        state = {
            "shards": len(view.shards),
            "assigned": sum(a == runner.address for a in view.assignments.values()),
            "healthy": view.healthy_runners,
            "releasing": len(view.releasing),
            "time": time.time(),
        }
        (out / f"view-{port}.tmp").write_text(json.dumps(state))
        (out / f"view-{port}.tmp").replace(out / f"view-{port}.json")
        await asyncio.sleep(0.1)


async def main(argv: list[str]) -> None:
    url, port_text, out_text, index_text, runners_text = argv[:5]
    requests, in_flight, entities = (int(a) for a in argv[5:8])
    volatile = argv[8:9] == ["volatile"]
    port, index, runners, out = int(port_text), int(index_text), int(runners_text), Path(out_text)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    config = plait.ShardingConfig(
        runner_address=plait.RunnerAddress(host="127.0.0.1", port=port),
        refresh_assignments_interval=timedelta(seconds=0.5),
    )
    async with plait.Runner(url, config=config) as runner:
        publisher = asyncio.create_task(publish(runner, out, port))
        while not (out / "go").exists():  # noqa: ASYNC110 - the bench says when to begin
            await asyncio.sleep(0.02)
        mine = iter(range(index, requests, runners))
        replies = 0

        async def sender() -> None:
            nonlocal replies
            for n in mine:
                if volatile:
                    assert await echo.call(f"e-{n % entities}", n) == n + 1
                else:
                    total = await add.call(f"c-{n % entities}", Add(key=f"r{n}", by=1))
                    assert total >= 1
                replies += 1

        began = time.time()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        ended = time.time()
        done = {"began": began, "ended": ended, "replies": replies}
        (out / f"done-{port}.json").write_text(json.dumps(done))
        await stop.wait()
        publisher.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
