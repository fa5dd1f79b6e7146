"""Suspended executions: what they cost in memory, and how fast they resume after a restart.

    .venv/bin/python -m benches.suspended [--count 100000] [--backend sqlite|postgres]

For each backend and each way of waiting (a durable clock of one hour, a deferred), an
engine on a fresh database starts `count` executions (1,000 at a time) of a workflow that runs
an activity and then waits; each one suspends. The process's resident memory (RSS) and its
live Python objects are read after each tenth: their slope is what one suspended execution
costs. Then the engine closes and a new one starts on the same database:

- clock: two hours later (a virtual clock), so every timer is due when it starts;
- deferred: after another process (a webhook, which does not define the workflow) completed
  every deferred while no engine ran.

The figure is how fast the new engine resumes them all and runs each to completion (one more
activity), from its start until the last one completes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from typing import Literal

import plait
from benches import machine
from benches.compare_dbos import POSTGRES_ADMIN
from benches.databases import database, usable_backends
from plait.testing import VirtualClock

Wait = Literal["clock", "deferred"]
CHUNK = 1_000

finished = 0
_target = 0
_all_finished: asyncio.Event | None = None

Gate = plait.DurableDeferred("BenchSuspendedGate", success=int)


@plait.activity
async def prepare(key: str) -> str:
    return key


@plait.activity
async def finish(key: str) -> str:
    global finished
    finished += 1
    if finished >= _target and _all_finished is not None:
        _all_finished.set()
    return key


@plait.workflow(name="BenchSuspendedNap", idempotency_key=lambda p: p.key)
async def napping(key: str) -> str:
    await prepare(key)
    await plait.DurableClock.sleep("nap", timedelta(hours=1))
    return await finish(key)


@plait.workflow(name="BenchSuspendedGated", idempotency_key=lambda p: p.key)
async def gated(key: str) -> str:
    await prepare(key)
    await Gate
    return await finish(key)


WORKFLOWS = {"clock": napping, "deferred": gated}


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Outcome:
    """One backend and way of waiting."""

    backend: str
    wait: Wait
    count: int
    #: (suspended so far, RSS bytes, live GC-tracked objects), after each tenth.
    samples: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    suspend_seconds: float = 0.0
    resume_seconds: float = 0.0

    @property
    def bytes_per_suspended(self) -> float:
        """RSS growth per suspended execution, from the first tenth to the last."""
        (n0, rss0, _), (n1, rss1, _) = self.samples[0], self.samples[-1]
        return (rss1 - rss0) / (n1 - n0) if n1 > n0 else 0.0

    @property
    def objects_per_suspended(self) -> float:
        """Live Python objects gained per suspended execution, first tenth to last."""
        (n0, _, o0), (n1, _, o1) = self.samples[0], self.samples[-1]
        return (o1 - o0) / (n1 - n0) if n1 > n0 else 0.0

    @property
    def resumed_per_second(self) -> float:
        return self.count / self.resume_seconds if self.resume_seconds else 0.0


async def _all_suspended(engine: plait.Engine) -> None:
    journal = engine.journal
    assert journal is not None
    while await journal.with_status("running"):  # noqa: ASYNC110 - the store is polled
        await asyncio.sleep(0.01)


def _engine(url: str, clock: VirtualClock) -> plait.Engine:
    return plait.Engine.url(url, clock=clock)


def _complete_deferreds_elsewhere(url: str, execution_ids: list[str]) -> None:
    """Completes every execution's gate from another process that does not define the
    workflow, as a webhook receiver would, while no engine runs it."""
    tokens = [Gate.token_from_execution_id(gated, eid) for eid in execution_ids]
    script = textwrap.dedent(
        f"""
        import asyncio, json, logging, sys
        import plait
        # This process does not define the workflow on purpose: its notice saying so is noise.
        logging.getLogger("plait").setLevel(logging.ERROR)
        gate = plait.DurableDeferred({Gate.name!r}, success=int)
        async def main():
            tokens = json.load(sys.stdin)
            async with plait.Engine.url({url!r}):
                for at in range(0, len(tokens), {CHUNK}):
                    done = await asyncio.gather(
                        *(gate.succeed(t, 1) for t in tokens[at : at + {CHUNK}])
                    )
                    assert all(done), "a deferred had a result already"
        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], input=json.dumps(tokens), text=True, check=True)


async def measure(url: str, backend: str, wait: Wait, count: int) -> Outcome:
    """Suspends `count` executions on `url`, restarts, and times their resumption."""
    global finished, _target, _all_finished
    workflow = WORKFLOWS[wait]
    run = next(_runs)
    keys = [f"{run}-{i}" for i in range(count)]
    outcome = Outcome(backend, wait, count)
    clock = VirtualClock()
    began = time.perf_counter()
    tenth = max(CHUNK, count // 10)
    async with _engine(url, clock) as engine:
        for at in range(0, count, CHUNK):
            await asyncio.gather(
                *(workflow.execute({"key": k}, discard=True) for k in keys[at : at + CHUNK])
            )
            done = min(at + CHUNK, count)
            if done % tenth == 0 or done == count:
                await _all_suspended(engine)
                gc.collect()
                outcome.samples.append((done, rss_bytes(), len(gc.get_objects())))
        await _all_suspended(engine)
    outcome.suspend_seconds = time.perf_counter() - began
    ids = [workflow.execution_id({"key": k}) for k in keys]
    if wait == "deferred":
        _complete_deferreds_elsewhere(url, ids)
    finished, _target, _all_finished = 0, count, asyncio.Event()
    later = VirtualClock(start=clock.now_ms() + 2 * 3_600_000)
    began = time.perf_counter()
    async with _engine(url, later):
        await asyncio.wait_for(_all_finished.wait(), timeout=600)
        outcome.resume_seconds = time.perf_counter() - began
    assert finished == count, f"{finished} of {count} finished"
    return outcome


_runs = itertools.count(1)


def run(backend: str, wait: Wait, count: int, admin_url: str = POSTGRES_ADMIN) -> Outcome:
    """One measurement on a fresh database."""
    with database(backend, admin_url) as url:
        return asyncio.run(measure(url, backend, wait, count))


def report(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table."""
    rows = [
        "| backend | waiting on | suspended | RSS per suspended | objects per suspended"
        " | resumed and completed after a restart |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.backend} | {o.wait} | {o.count:,} | {o.bytes_per_suspended:,.1f} B"
            f" | {o.objects_per_suspended:.3f} | {o.resumed_per_second:,.0f}/s"
            f" ({o.resume_seconds:.1f} s) |"
        )
    return "\n".join(rows)


def main() -> int:
    """Runs every measurement and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--wait", choices=["clock", "deferred"], action="append")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL of the server")
    args = parser.parse_args()
    backends = usable_backends(args.backend, args.postgres)
    speed_before = machine.speed()
    outcomes = []
    for backend in backends:
        for wait in args.wait or ["clock", "deferred"]:
            print(f"  {backend:8} {wait:8} {args.count:,} ...", end="", flush=True)
            outcome = run(backend, wait, args.count, args.postgres)
            print(
                f" {outcome.bytes_per_suspended:,.1f} B/suspended,"
                f" resumed {outcome.resumed_per_second:,.0f}/s",
                flush=True,
            )
            outcomes.append(outcome)
    print()
    print(report(outcomes))
    print(
        "RSS and objects per suspended: growth from the first tenth suspended to all of them,"
        " divided by the executions added (gc.collect() before each reading)."
    )
    print(f"Machine speed before: {speed_before}; after: {machine.speed()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
