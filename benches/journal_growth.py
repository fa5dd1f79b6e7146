"""Throughput as the journal grows: the same workload on an empty journal and on a full one.

    .venv/bin/python -m benches.journal_growth [--rows 10000000] [--backend sqlite|postgres]

On a fresh database, the workflow of three activities runs 1,000 in flight (`--rounds`
batches of `--per-round` workflows); then the journal is filled, through the store's own
write path, with finished executions of three steps each (as many as the engine would have
left behind) up to each checkpoint (1/10, 1/3 and all of `--rows` journal rows), and the
workload runs again on a new engine, once the database has written the fill back
(PostgreSQL `CHECKPOINT`, `sync`). Each measurement starts with a round of 1,000 workflows
not counted. Printed: workflows/s at each size, the median of the rounds, and the ratio to
the empty journal.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import statistics
import sys
import time

import plait
from benches import machine
from benches.compare_dbos import PLAIT_WORKFLOWS, POSTGRES_ADMIN, measure, psql
from benches.databases import database, usable_backends
from plait import _bridge
from plait._native import Op

STEPS = ("add_one/1", "double/1", "subtract_one/1")
FILL_BATCH = 8_000  # ops per store write: 1,600 executions


@dataclasses.dataclass
class Point:
    """Throughput with `rows` journal rows stored."""

    rows: int
    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


async def fill(engine: plait.Engine, start: int, stop: int) -> None:
    """Stores finished executions `start..stop` of three steps each, as the engine would."""
    store = engine.store
    assert store is not None
    value = b'{"_tag":"Success","value":1}'
    payload = b'{"x":1}'
    per_batch = FILL_BATCH // (len(STEPS) + 2)
    for at in range(start, stop, per_batch):
        ops: list[Op] = []
        for n in range(at, min(at + per_batch, stop)):
            execution_id = plait.execution_id("GrowthFill", str(n))
            ops.append(Op.start(execution_id, "GrowthFill", payload, None))
            ops.extend(Op.append(execution_id, key, seq, value) for seq, key in enumerate(STEPS))
            ops.append(Op.status(execution_id, "complete", value))
        results = await _bridge.call(functools.partial(store.write, ops=ops))
        assert results[0] is None, "fill executions must be new"


def settle(url: str) -> None:
    """Lets the database write the fill back before measuring, so a round does not share the
    disk with it: PostgreSQL checkpoints (which needs a superuser or `pg_checkpoint`), and the
    OS flushes its dirty pages."""
    if not url.startswith("sqlite"):
        try:
            psql(url, "CHECKPOINT", timeout=600)
        except RuntimeError as err:
            print(f"    (no CHECKPOINT: {err})", flush=True)
    os.sync()


async def rates(engine: plait.Engine, rounds: int, per_round: int) -> list[float]:
    """Workflows/s of `rounds` rounds, 1,000 in flight."""
    workflow = PLAIT_WORKFLOWS["three"]

    async def call(x: int) -> int:
        result: int = await workflow.execute({"x": x}, engine=engine)
        return result

    await measure(call, "three", 1_000, 1_000)  # warm-up: caches, the id -> number cache
    out = []
    for _ in range(rounds):
        elapsed, _ = await measure(call, "three", per_round, 1_000)
        out.append(per_round / elapsed)
    return out


async def grow(url: str, rows: int, rounds: int, per_round: int) -> list[Point]:
    """Throughput at each checkpoint of the journal's size, on one database."""
    checkpoints = sorted({0, rows // 10, rows // 3, rows})
    points: list[Point] = []
    filled = 0  # executions written by `fill`
    stored = 0  # journal rows the workload itself left (warm-up rounds included)
    for target in checkpoints:
        executions = max(0, -(-(target - stored) // len(STEPS)))  # at least `target` rows
        if executions > filled:
            began = time.perf_counter()
            async with plait.Engine.url(url) as engine:
                await fill(engine, filled, executions)
            settle(url)
            took = time.perf_counter() - began
            filled = executions
            rows_filled = filled * len(STEPS) + stored
            print(f"    filled to {rows_filled:,} rows in {took:.0f} s", flush=True)
        rows_before = filled * len(STEPS) + stored
        async with plait.Engine.url(url) as engine:
            measured = await rates(engine, rounds, per_round)
        stored += (rounds * per_round + 1_000) * len(STEPS)
        points.append(Point(rows_before, measured))
        print(
            f"    {points[-1].rows:>12,} rows: "
            + ", ".join(f"{r:,.0f}" for r in measured)
            + " workflows/s",
            flush=True,
        )
    return points


def main() -> int:
    """Runs the measurement on each backend and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL of the server")
    args = parser.parse_args()
    backends = usable_backends(args.backend, args.postgres)
    speed_before = machine.speed()
    table = [
        "| backend | journal rows | workflows/s (median) | rounds | vs. empty |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for backend in backends:
        print(f"  {backend}", flush=True)
        with database(backend, args.postgres) as url:
            points = asyncio.run(grow(url, args.rows, args.rounds, args.per_round))
        base = points[0].median
        for point in points:
            table.append(
                f"| {backend} | {point.rows:,} | {point.median:,.0f} | "
                + ", ".join(f"{r:,.0f}" for r in point.rates)
                + f" | {point.median / base:.2f} |"
            )
    print()
    print("\n".join(table))
    print(
        "Workload: 3 activities, 1,000 in flight; durability full. Rows: journal rows (step"
        " results) stored before the round, filled through the store's write path."
    )
    print(f"Machine speed before: {speed_before}; after: {machine.speed()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
