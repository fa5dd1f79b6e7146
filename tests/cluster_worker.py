"""A runner process for the cluster tests: one runner of a cluster on the real PostgreSQL.

Usage: `python -m tests.cluster_worker <url> <prefix> <port> <dir> [<requests> <accounts>]`

It serves the entity `ClusterAccount` (persisted deposits with a primary key, durable state).
Each handler run appends `<key> <port> <start ns> <end ns>` to `<dir>/effects` with one
`write`, so runs repeated after a kill and overlapping runs of one entity on two runners show.
It also registers the singleton `ClusterHeartbeat` (see `heartbeat`) and the cron job
`ClusterTick`, every second (see `tick`). Every 100 ms it writes
what it sees of the cluster to `<dir>/view-<port>.json`.

With `<requests> <accounts>` it also sends that many persisted deposits over that many account
ids, all in flight at once (the same primary keys when run again), once `<dir>/go` exists;
then it appends `<key> <reply>` per reply to `<dir>/replies-<port>` as each comes, and
writes `<dir>/done-<port>` once all have.
With `CLUSTER_COPIES=<k>` it sends each deposit k times at once (one stored, the others its
duplicates; every copy's reply is appended), `CLUSTER_SEND_DELAY=<seconds>` after `go`.
With `CLUSTER_VOLATILE=1` those requests are volatile instead: `ClusterEcho.echo(n)` over the
entity ids `echo-<n % accounts>`, recorded as `v<n> <port> <start ns> <end ns>` by the runner
that ran it and answered with its port (replies `v<n> <port>`). They cross runners over the
runners' transport, not the database.

With `CLUSTER_INTERRUPT=<its port>` it sends one volatile `ClusterEcho.slow` to an entity on
another runner once `<dir>/go` exists, gives up once the handler started there (it appends
`<entity id> <port>` to `<dir>/started`), and writes `<dir>/done-<port>`; the handler appends
`<entity id> <port>` to `<dir>/cancelled` when it is cancelled.

With `CLUSTER_LISTEN_PORT=<port>` the runner listens there, not at the address it gives the
others: no process reaches it over the runners' transport (a firewall between runners).
With `CLUSTER_DIE_BEFORE_SEND=1` the process SIGKILLs itself once its first persisted requests
for another runner are saved, before it sends them there; their claim lasts 3 s.

With `CLUSTER_VANISH=<its port>` it sends one volatile `ClusterEcho.slow` once `<dir>/go`
exists and writes the class name of the error it gets to `<dir>/error-<port>`.
It runs until SIGTERM (a graceful leave) or SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

import plait
from plait._native import shard_id

# Set by the command line; a process that imports this module to serve `ClusterAccount`
# (`plait serve tests.cluster_worker --runner ...`) gives them in the environment.
EFFECTS = os.environ.get("CLUSTER_EFFECTS", "")
PORT = int(os.environ.get("CLUSTER_PORT", "0"))
# How long a deposit's handler may take (uniformly up to it): long enough in the fencing test
# that a paused runner is caught inside handlers.
HANDLER_SECONDS = float(os.environ.get("CLUSTER_HANDLER_SECONDS", "0.003"))


def record(line: str) -> None:
    """Records a handler's run in the effects file."""
    append(EFFECTS, line)


def append(path: str, line: str) -> None:
    """Appends one line with a single `write` (O_APPEND): whole lines even under SIGKILL."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Deposit(BaseModel):
    key: str
    amount: int


class Ledger(BaseModel):
    total: int = 0
    deposits: int = 0


Account = plait.Entity("ClusterAccount", state=Ledger)


@Account.rpc(persisted=True, primary_key=lambda d: d.key)
async def deposit(ctx: plait.EntityContext[Ledger], d: Deposit) -> int:
    start = time.time_ns()
    await asyncio.sleep(random.uniform(0, HANDLER_SECONDS))
    ctx.state.total += d.amount
    ctx.state.deposits += 1
    record(f"{d.key} {PORT} {start} {time.time_ns()}")
    return ctx.state.total


@Account.rpc()
async def ledger(ctx: plait.EntityContext[Ledger]) -> Ledger:
    return ctx.state


class Ping(BaseModel):
    n: int


Echo = plait.Entity("ClusterEcho")


@Echo.rpc()
async def echo(ctx: plait.EntityContext, ping: Ping) -> int:
    start = time.time_ns()
    await asyncio.sleep(random.uniform(0, HANDLER_SECONDS))
    record(f"v{ping.n} {PORT} {start} {time.time_ns()}")
    return PORT


@Echo.rpc()
async def slow(ctx: plait.EntityContext) -> None:
    append(str(Path(EFFECTS).parent / "started"), f"{ctx.entity_id} {PORT}")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        append(str(Path(EFFECTS).parent / "cancelled"), f"{ctx.entity_id} {PORT}")
        raise


async def heartbeat() -> None:
    """A singleton: ticks every 50 ms into `<dir>/singleton`, so overlaps between runners show."""
    path = str(Path(EFFECTS).parent / "singleton")
    while True:
        append(path, f"{PORT} {time.time_ns()}")
        await asyncio.sleep(0.05)


async def tick(at: datetime) -> None:
    """A cron job every second: `<dir>/cron` gets `<tick> <port>` per run."""
    append(str(Path(EFFECTS).parent / "cron"), f"{at.isoformat()} {PORT}")


def amount_of(n: int) -> int:
    return n % 7 + 1


def config(port: int) -> plait.ShardingConfig:
    expiration = float(os.environ.get("CLUSTER_LEASE_SECONDS", "4"))
    listen = os.environ.get("CLUSTER_LISTEN_PORT")
    return plait.ShardingConfig(
        # Port 0: a client-only process.
        runner_address=plait.RunnerAddress(host="127.0.0.1", port=port) if port else None,
        runner_listen_address=(
            plait.RunnerAddress(host="127.0.0.1", port=int(listen)) if listen and port else None
        ),
        shard_lock_expiration=timedelta(seconds=expiration),
        shard_lock_refresh_interval=timedelta(seconds=expiration / 4),
        refresh_assignments_interval=timedelta(seconds=0.5),
        entity_termination_timeout=timedelta(seconds=2),
        entity_message_poll_interval=timedelta(seconds=1),
        runner_health_check_interval=timedelta(
            seconds=float(os.environ.get("CLUSTER_HEALTH_SECONDS", "60"))
        ),
    )


async def main(url: str, prefix: str, port: int, out: Path, requests: int, accounts: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with plait.Runner(url, config=config(port), prefix=prefix) as runner:

        async def publish() -> None:
            while True:
                view = runner.view()
                me = runner.address
                state = {
                    "address": me,
                    "shards": len(view.shards),
                    "assigned": sum(owner == me for owner in view.assignments.values()),
                    "fenced": view.fenced_writes,
                    "entities": view.entities,
                    "releasing": len(view.releasing),
                    "runners": view.runners,
                    "healthy": view.healthy_runners,
                    "machine_id": view.machine_id,
                    "runner_entities": view.runner_entities,
                    "time": time.time(),
                }
                tmp = out / f"view-{port}.tmp"
                tmp.write_text(json.dumps(state))
                tmp.replace(out / f"view-{port}.json")
                await asyncio.sleep(0.1)

        publisher = asyncio.create_task(publish())
        if requests:
            while not (out / "go").exists():  # noqa: ASYNC110 - the test says when to begin
                await asyncio.sleep(0.05)
            replies = str(out / f"replies-{port}")

            async def send(n: int) -> None:
                value = await deposit.call(
                    f"acct-{n % accounts}", Deposit(key=f"d{n}", amount=amount_of(n))
                )
                append(replies, f"d{n} {value}")

            async def send_volatile(n: int) -> None:
                value = await echo.call(f"echo-{n % accounts}", Ping(n=n))
                append(replies, f"v{n} {value}")

            volatile = os.environ.get("CLUSTER_VOLATILE") == "1"
            each = send_volatile if volatile else send
            copies = int(os.environ.get("CLUSTER_COPIES", "1"))
            await asyncio.sleep(float(os.environ.get("CLUSTER_SEND_DELAY", "0")))
            await asyncio.gather(*(each(n) for n in range(requests) for _ in range(copies)))
            (out / f"done-{port}").write_text("done")
        elif os.environ.get("CLUSTER_INTERRUPT") == str(port):
            while not (out / "go").exists():  # noqa: ASYNC110 - the test says when to begin
                await asyncio.sleep(0.05)
            view = runner.view()
            elsewhere = next(
                f"slow-{i}"
                for i in range(10_000)
                if view.assignments[f"default:{shard_id(f'slow-{i}', 300)}"] != runner.address
            )
            (out / "slow").write_text(elsewhere)
            call = asyncio.ensure_future(slow.call(elsewhere))
            while not (out / "started").exists():  # noqa: ASYNC110 - the other runner's file
                await asyncio.sleep(0.02)
            call.cancel()  # the caller gives up once the handler runs over there
            with contextlib.suppress(asyncio.CancelledError):
                await call
            (out / f"done-{port}").write_text("done")
        elif os.environ.get("CLUSTER_VANISH") == str(port):
            while not (out / "go").exists():  # noqa: ASYNC110 - the test says when to begin
                await asyncio.sleep(0.05)
            try:
                await slow.call("vanishing")
                outcome = "replied"
            except plait.PlaitError as err:
                outcome = type(err).__name__
            (out / f"error-{port}").write_text(outcome)
        await stop.wait()
        publisher.cancel()


def die_before_send() -> None:
    """Dies (SIGKILL) between saving persisted requests for another runner and sending them."""
    from plait.cluster import runtime

    runtime.FORWARD_CLAIM_MS = 3_000
    send = runtime.EntityRuntime._send_elsewhere

    def dying(self: runtime.EntityRuntime, outgoing: list[runtime.Outgoing]) -> None:
        if any(each.persisted for each in outgoing):
            os.kill(os.getpid(), signal.SIGKILL)
        send(self, outgoing)

    runtime.EntityRuntime._send_elsewhere = dying  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("CLUSTER_DIE_BEFORE_SEND") == "1":
        die_before_send()
    # Registered here, not on import: a test process that imports this module (pytest's
    # doctest collection) must not run them in its own engines.
    plait.Singleton("ClusterHeartbeat", heartbeat)
    plait.ClusterCron("ClusterTick", "* * * * * *", tick)
    url, prefix, port_text, out_dir = sys.argv[1:5]
    PORT = int(port_text)
    EFFECTS = str(Path(out_dir) / "effects")
    requests = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    accounts = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    asyncio.run(main(url, prefix, PORT, Path(out_dir), requests, accounts))
