"""plait's entities side by side with Effect's cluster and Restate's virtual objects, in one run.

    .venv/bin/python -m benches.entities [--quick] [--postgres ADMIN_URL] [--no-peers]

The same counter entity on each system: an RPC that adds to the instance's count and returns
it, persisted (stored before it runs, deduplicated by a primary key that is unique per request,
its reply stored) and volatile (in memory only). Workloads, each on a fresh store:

- persisted RPCs with 1,000 in flight over 10,000 entity ids (20,000 requests; request i goes
  to entity i mod 10,000, a new request starts as one ends), and one after another to one warm
  instance (p50/p99): plait on a SQLite file and on PostgreSQL, Effect 4's cluster (one runner,
  `SingleRunner`, its SQL message storage on the same PostgreSQL), Restate (a virtual object
  whose count is its durable state; each call carries an idempotency key);
- volatile RPCs, the same two ways, in process: plait and Effect (Restate has none);
- memory per idle resident instance: 10,000 instances made by one volatile request each, then
  left idle: plait (Python's allocations by tracemalloc, the process's RSS, Python objects) and
  Effect (V8's heap, RSS).

Every reply is checked: per entity, the counts returned are consecutive (each increment counted
exactly once). The peers' programs are `benches/peers/`; they are installed under
`/tmp/plait-entity-peers` (`--peers-dir`) and a peer that cannot be installed or started gets
rows saying why. `--quick` runs a fifth of the requests, over 2,000 entity ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

import plait
from benches import entity_peers, machine
from benches.compare_dbos import POSTGRES_ADMIN, insert_floor, postgres_missing, psql

Workload: TypeAlias = Literal[
    "persisted-in-flight",
    "persisted-sequential",
    "volatile-in-flight",
    "volatile-sequential",
    "idle",
]
#: Sends one increment of 1 to an entity id with a request key; the count it replies.
Call: TypeAlias = Callable[[str, str], Awaitable[int]]

LABELS: dict[Workload, str] = {
    "persisted-in-flight": "persisted RPCs, {in_flight:,} in flight over {entities:,} ids",
    "persisted-sequential": "persisted RPC, one at a time",
    "volatile-in-flight": "volatile RPCs, {in_flight:,} in flight over {entities:,} ids",
    "volatile-sequential": "volatile RPC, one at a time",
    "idle": "{idle:,} idle resident instances",
}
_databases = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many requests each workload sends, over how many entity ids."""

    entities: int = 10_000
    in_flight: int = 1_000
    persisted: int = 20_000
    volatile: int = 100_000
    sequential: int = 500
    idle: int = 10_000
    warmup: int = 100

    def label(self, workload: Workload) -> str:
        return LABELS[workload].format(**dataclasses.asdict(self))

    def count(self, workload: Workload) -> int:
        return {
            "persisted-in-flight": self.persisted,
            "volatile-in-flight": self.volatile,
            "persisted-sequential": self.sequential,
            "volatile-sequential": self.sequential,
            "idle": self.idle,
        }[workload]


FULL = Sizes()
QUICK = Sizes(entities=2_000, persisted=4_000, volatile=20_000, sequential=100, idle=2_000)


@dataclasses.dataclass
class Row:
    """One measurement: a workload on a system and its storage, or why it is missing."""

    system: str
    storage: str
    workload: Workload
    count: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    #: Bytes (or objects) per idle resident instance, by what measured them.
    memory: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Why it was not measured (a peer not installed, a feature not built): not a failure.
    missing: str | None = None
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def quantile_ms(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]


# The counter entity ------------------------------------------------------------------------------


class Increment(BaseModel):
    """An increment; `key` identifies the request (the persisted RPC's primary key)."""

    key: str
    by: int


class Count(BaseModel):
    """The counter's state: durable with persisted RPCs (written with the reply)."""

    value: int = 0


Counter = plait.Entity("BenchCounter", state=Count)


@Counter.rpc(persisted=True, primary_key=lambda req: req.key)
async def increment(ctx: plait.EntityContext[Count], req: Increment) -> int:
    ctx.state = Count(value=ctx.state.value + req.by)
    return ctx.state.value


@Counter.rpc()
async def bump(ctx: plait.EntityContext[Count], req: Increment) -> int:
    ctx.state = Count(value=ctx.state.value + req.by)
    return ctx.state.value


# Driving a workload ------------------------------------------------------------------------------

PERSISTED: list[Workload] = ["persisted-sequential", "persisted-in-flight"]
VOLATILE: list[Workload] = ["volatile-sequential", "volatile-in-flight"]


def check(what: str, replies: dict[str, list[int]]) -> None:
    """Per entity, the counts replied must be consecutive: each increment counted once."""
    for entity_id, values in replies.items():
        values.sort()
        if values != list(range(values[0], values[0] + len(values))):
            raise AssertionError(f"{what}: entity {entity_id} replied {values[:20]}")


async def sequential(call: Call, prefix: str, count: int) -> tuple[float, list[float]]:
    """`count` requests one after another to one instance; elapsed seconds, latencies in ms."""
    replies: dict[str, list[int]] = {f"{prefix}-0": []}
    latencies = []
    started = time.perf_counter()
    for n in range(count):
        began = time.perf_counter()
        replies[f"{prefix}-0"].append(await call(f"{prefix}-0", f"{prefix}-s{n}"))
        latencies.append((time.perf_counter() - began) * 1e3)
    elapsed = time.perf_counter() - started
    check("one at a time", replies)
    return elapsed, latencies


async def in_flight(
    call: Call, prefix: str, count: int, entities: int, at_once: int
) -> tuple[float, list[float]]:
    """`count` requests over `entities` ids, `at_once` in flight (a new one starts as one
    ends); elapsed seconds and each request's latency in ms."""
    replies: dict[str, list[int]] = defaultdict(list)
    latencies: list[float] = []
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:  # shared: each worker takes the next request number
            entity_id = f"{prefix}-{n % entities}"
            began = time.perf_counter()
            replies[entity_id].append(await call(entity_id, f"{prefix}-k{n}"))
            latencies.append((time.perf_counter() - began) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(at_once, count))))
    elapsed = time.perf_counter() - started
    check("in flight", replies)
    return elapsed, latencies


async def warm(call: Call, prefix: str, count: int) -> None:
    """A few requests to the first ids, not measured: connections, caches, code paths."""
    for n in range(count):
        await call(f"{prefix}-{n}", f"{prefix}-w{n}")


async def drive(
    call: Call, system: str, storage: str, kind: Literal["persisted", "volatile"], sizes: Sizes
) -> list[Row]:
    """The sequential and the in-flight workload of `kind` through `call`, on fresh ids."""
    prefix = uuid.uuid4().hex[:8]
    await warm(call, prefix, sizes.warmup)
    one, many = PERSISTED if kind == "persisted" else VOLATILE
    rows = []
    elapsed, latencies = await sequential(call, prefix, sizes.sequential)
    rows.append(Row(system, storage, one, sizes.sequential, elapsed, latencies))
    count = sizes.count(many)
    gc.collect()
    elapsed, latencies = await in_flight(call, prefix, count, sizes.entities, sizes.in_flight)
    rows.append(Row(system, storage, many, count, elapsed, latencies))
    return rows


def missing_rows(system: str, storage: str, workloads: Sequence[Workload], why: str) -> list[Row]:
    return [Row(system, storage, workload, missing=why) for workload in workloads]


def failed_rows(system: str, storage: str, workloads: Sequence[Workload], err: str) -> list[Row]:
    return [Row(system, storage, workload, error=err) for workload in workloads]


# plait -------------------------------------------------------------------------------------------


def _persisted_call(engine: plait.Engine) -> Call:
    def call(entity_id: str, key: str) -> Awaitable[int]:
        return increment.call(entity_id, Increment(key=key, by=1), engine=engine)

    return call


def _volatile_call(engine: plait.Engine) -> Call:
    def call(entity_id: str, key: str) -> Awaitable[int]:
        return bump.call(entity_id, Increment(key=key, by=1), engine=engine)

    return call


@contextlib.contextmanager
def fresh_postgres(admin_url: str, label: str) -> Iterator[str]:
    """A new empty database on the server, removed afterwards: its URL."""
    name = f"entities_{label}_{os.getpid()}_{next(_databases)}"
    psql(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def plait_engine(backend: str, admin_url: str) -> AsyncIterator[plait.Engine]:
    """A started plait engine on a fresh store: "memory", "sqlite" (a file) or "postgres"."""
    if backend == "memory":
        async with plait.Engine.memory() as engine:
            yield engine
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="plait-entities-") as tmp:
            async with plait.Engine.sqlite(Path(tmp) / "plait.db") as engine:
                yield engine
    else:
        with fresh_postgres(admin_url, "plait") as url:
            async with plait.Engine.postgres(url) as engine:
                yield engine


STORAGE = {"memory": "memory", "sqlite": "SQLite file", "postgres": "PostgreSQL"}


def plait_persisted(backend: str, sizes: Sizes, admin_url: str) -> list[Row]:
    """plait's persisted rows on `backend`; rows saying why if they could not run."""
    storage = STORAGE[backend]

    async def go() -> list[Row]:
        async with plait_engine(backend, admin_url) as engine:
            return await drive(_persisted_call(engine), "plait", storage, "persisted", sizes)

    try:
        return asyncio.run(go())
    except Exception as err:
        return failed_rows("plait", storage, PERSISTED, f"{type(err).__name__}: {err}")


def plait_volatile(sizes: Sizes) -> list[Row]:
    """plait's volatile rows, in process on the memory engine (volatile RPCs store nothing)."""

    async def go() -> list[Row]:
        async with plait_engine("memory", "") as engine:
            return await drive(_volatile_call(engine), "plait", "in process", "volatile", sizes)

    try:
        return asyncio.run(go())
    except Exception as err:
        return failed_rows("plait", "in process", VOLATILE, f"{type(err).__name__}: {err}")


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def _settle() -> None:
    """Lets the last replies free their slots, then collects what they left."""
    for _ in range(3):
        await asyncio.sleep(0.01)
    gc.collect()


async def _idle_growth(count: int, at_once: int, measure: Callable[[], float]) -> float:
    """How much `measure()` grows while `count` instances are made (one volatile request each)
    on a fresh memory engine with no resident cap, and left idle."""
    config = plait.ShardingConfig(max_resident_entities="unbounded")
    async with plait.Engine.memory(sharding=config) as engine:
        call = _volatile_call(engine)
        prefix = uuid.uuid4().hex[:8]
        await in_flight(call, f"{prefix}-warm", 200, 200, at_once)
        await _settle()
        before = measure()
        await in_flight(call, prefix, count, count, at_once)
        await _settle()
        growth = measure() - before
        resident = engine.work_source.resident()
        if resident != count + 200:
            raise AssertionError(f"{resident} instances resident, {count + 200} expected")
        return growth


def idle_memory(count: int, at_once: int) -> dict[str, float]:
    """Memory per idle resident instance, three ways, each on a fresh engine: the process's RSS
    first (run it in a fresh process: memory freed by earlier work would be reused unseen),
    then Python objects, then Python's allocations (tracemalloc)."""

    async def go() -> dict[str, float]:
        memory = {}
        if _rss() is not None:
            rss = await _idle_growth(count, at_once, lambda: float(_rss() or 0))
            memory["RSS B"] = rss / count
        objects = await _idle_growth(count, at_once, lambda: float(len(gc.get_objects())))
        memory["Python objects"] = objects / count
        tracemalloc.start()
        try:
            traced = await _idle_growth(
                count, at_once, lambda: float(tracemalloc.get_traced_memory()[0])
            )
        finally:
            tracemalloc.stop()
        memory["tracemalloc B"] = traced / count
        return memory

    return asyncio.run(go())


def plait_idle(sizes: Sizes) -> Row:
    """`idle_memory` in a fresh Python process (this module with `--idle-child`)."""
    row = Row("plait", "in process", "idle", sizes.idle)
    args = [sys.executable, "-m", "benches.entities", "--idle-child"]
    args += [str(sizes.idle), str(sizes.in_flight)]
    try:
        done = subprocess.run(
            args,
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        row.memory = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.CalledProcessError as err:
        row.error = f"the measuring process failed: {err.stderr.strip()[-500:]}"
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as err:
        row.error = f"{type(err).__name__}: {err}"
    return row


# Effect ------------------------------------------------------------------------------------------

EFFECT_STORAGE = "PostgreSQL (SqlMessageStorage)"


def effect_rows(
    effect: entity_peers.Effect, sizes: Sizes, admin_url: str
) -> tuple[list[Row], list[Row], Row]:
    """Effect's persisted, volatile and idle rows, each mode in a process of its own on a fresh
    database (volatile requests never touch it, but the runner needs its storage)."""
    base = {
        "entities": sizes.entities,
        "count": 0,
        "inFlight": sizes.in_flight,
        "sequential": sizes.sequential,
        "warmup": sizes.warmup,
        "idle": sizes.idle,
    }

    def run(mode: str, count: int, workloads: list[Workload]) -> list[Row]:
        storage = EFFECT_STORAGE if mode == "persisted" else "in process"
        try:
            with fresh_postgres(admin_url, f"effect_{mode}") as url:
                config = {**base, "mode": mode, "count": count, "pgUrl": url}
                config["prefix"] = uuid.uuid4().hex[:8]
                lines = entity_peers.run_effect(effect, config)
        except (entity_peers.PeerUnavailable, RuntimeError) as err:
            return failed_rows("Effect", storage, workloads, str(err))
        rows = []
        for line in lines:
            workload: Workload = line["row"]
            row = Row("Effect", storage, workload, int(line["count"]))
            if workload == "idle":
                row.memory["V8 heap B"] = line["heapBytes"] / row.count
                row.memory["RSS B"] = line["rssBytes"] / row.count
            else:
                row.elapsed = float(line["elapsed"])
                row.latencies_ms = [float(x) for x in line["latencies"]]
            rows.append(row)
        return rows

    persisted = run("persisted", sizes.persisted, PERSISTED)
    volatile = run("volatile", sizes.volatile, VOLATILE)
    idle = run("idle", 0, ["idle"]) or failed_rows("Effect", "in process", ["idle"], "no figure")
    return persisted, volatile, idle[0]


# Restate -----------------------------------------------------------------------------------------

RESTATE_STORAGE = "Restate's own (RocksDB + local log)"


def restate_rows(restate: entity_peers.Restate, sizes: Sizes) -> list[Row]:
    """Restate's persisted rows: the virtual object called through the ingress over HTTP
    (aiohttp, one connection per request in flight), each call with an idempotency key."""
    import aiohttp  # plait's `http` extra brings it; only this client needs it here

    async def go(url: str) -> list[Row]:
        connector = aiohttp.TCPConnector(limit=sizes.in_flight)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def call(entity_id: str, key: str) -> int:
                async with session.post(
                    f"{url}/BenchCounter/{entity_id}/increment",
                    json=1,
                    headers={"idempotency-key": key},
                ) as answer:
                    answer.raise_for_status()
                    value: int = await answer.json()
                    return value

            return await drive(call, "Restate", RESTATE_STORAGE, "persisted", sizes)

    try:
        with entity_peers.restate_running(restate) as url:
            return asyncio.run(go(url))
    except entity_peers.PeerUnavailable as err:
        return failed_rows("Restate", RESTATE_STORAGE, PERSISTED, str(err))
    except Exception as err:
        return failed_rows("Restate", RESTATE_STORAGE, PERSISTED, f"{type(err).__name__}: {err}")


# Report ------------------------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _memory(row: Row) -> str:
    """`{"RSS B": 1953.4, "Python objects": 3.0}` as "1,953 B (RSS); 3.0 Python objects"."""
    parts = []
    for what, value in row.memory.items():
        if what.endswith(" B"):
            parts.append(f"{value:,.0f} B ({what.removesuffix(' B')})")
        else:
            parts.append(f"{value:,.1f} {what}")
    return "; ".join(parts)


def reference(rows: Sequence[Row], row: Row) -> Row | None:
    """The plait row a peer's row is compared with: the same workload, on PostgreSQL for
    persisted RPCs, in process otherwise."""
    if row.system == "plait":
        return None
    storage = "PostgreSQL" if row.workload.startswith("persisted") else "in process"
    return next(
        (
            r
            for r in rows
            if r.system == "plait" and r.workload == row.workload and r.storage == storage
        ),
        None,
    )


def advantage(rows: Sequence[Row], row: Row) -> str:
    """How many times better plait's row is than this peer row: throughput over throughput,
    latency under latency (p50), memory under memory."""
    plait_row = reference(rows, row)
    if plait_row is None or plait_row.error or plait_row.missing or row.error or row.missing:
        return ""
    if row.workload == "idle":
        theirs = row.memory.get("RSS B")
        ours = plait_row.memory.get("RSS B")
        return f"{theirs / ours:,.1f}x (RSS)" if theirs and ours and ours > 0 else ""
    if row.workload.endswith("sequential"):
        ours = plait_row.quantile_ms(50)
        return f"{row.quantile_ms(50) / ours:,.1f}x" if ours else ""
    return f"{plait_row.per_second / row.per_second:,.1f}x" if row.per_second else ""


def table(rows: Sequence[Row], sizes: Sizes) -> str:
    """The rows as one Markdown table."""
    header = ["system", "storage", "workload", "RPCs/s", "p50 ms", "p99 ms", "per idle instance"]
    header.append("plait vs it")
    lines = [header]
    for r in rows:
        label = sizes.label(r.workload)
        if r.error or r.missing:
            why = f"error: {r.error}" if r.error else f"not measured: {r.missing}"
            lines.append([r.system, r.storage, label, why, "", "", "", ""])
        elif r.workload == "idle":
            lines.append([r.system, r.storage, label, "", "", "", _memory(r), advantage(rows, r)])
        else:
            lines.append(
                [
                    r.system,
                    r.storage,
                    label,
                    _rate(r.per_second),
                    _ms(r.quantile_ms(50)),
                    _ms(r.quantile_ms(99)),
                    "",
                    advantage(rows, r),
                ]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {4, 5, 7}

    def render(line: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def targets(rows: Sequence[Row]) -> list[str]:
    """Issue 12's targets against this run's rows."""

    def find(system: str, storage: str, workload: Workload) -> Row | None:
        return next(
            (
                r
                for r in rows
                if (r.system, r.storage, r.workload) == (system, storage, workload)
                and not (r.error or r.missing)
            ),
            None,
        )

    out = []
    pg = find("plait", "PostgreSQL", "persisted-in-flight")
    effect = find("Effect", EFFECT_STORAGE, "persisted-in-flight")
    if pg and effect:
        ratio = pg.per_second / effect.per_second
        out.append(
            f"persisted in flight, PostgreSQL: ≥ 20x Effect: {ratio:,.1f}x"
            f" ({'met' if ratio >= 20 else 'not met'})"
        )
    else:
        out.append("persisted in flight, PostgreSQL: ≥ 20x Effect: not measured")
    sqlite = find("plait", "SQLite file", "persisted-in-flight")
    out.append(
        f"persisted in flight, SQLite: ≥ 10,000/s: {_rate(sqlite.per_second)}/s"
        f" ({'met' if sqlite.per_second >= 10_000 else 'not met'})"
        if sqlite
        else "persisted in flight, SQLite: ≥ 10,000/s: not measured"
    )
    volatile = find("plait", "in process", "volatile-in-flight")
    out.append(
        f"volatile in process: ≥ 50,000/s: {_rate(volatile.per_second)}/s"
        f" ({'met' if volatile.per_second >= 50_000 else 'not met'})"
        if volatile
        else "volatile in process: ≥ 50,000/s: not measured"
    )
    one = find("plait", "PostgreSQL", "persisted-sequential")
    out.append(
        f"one persisted RPC, PostgreSQL: p50 ≤ 2 ms: {_ms(one.quantile_ms(50))} ms"
        f" ({'met' if one.quantile_ms(50) <= 2 else 'not met'})"
        if one
        else "one persisted RPC, PostgreSQL: p50 ≤ 2 ms: not measured"
    )
    return out


def _load() -> str:
    """The machine's load averages: the other work sharing its two cores during the run."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every row and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL of the server")
    parser.add_argument(
        "--peers-dir", type=Path, default=entity_peers.DEFAULT_DIR, help="where peers install"
    )
    parser.add_argument("--no-peers", action="store_true", help="plait's rows only")
    parser.add_argument("--idle-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.idle_child:  # plait_idle's fresh process: print the figures as JSON
        print(json.dumps(idle_memory(*args.idle_child)))
        return 0
    sizes = QUICK if args.quick else FULL
    admin: str = args.postgres
    pg_missing = postgres_missing(admin)
    notes: list[str] = []

    def step(what: str) -> None:
        print(f"  {what} ...", flush=True)

    effect: entity_peers.Effect | str = "skipped (--no-peers)"
    restate: entity_peers.Restate | str = "skipped (--no-peers)"
    if not args.no_peers:
        step("installing Effect")
        try:
            effect = entity_peers.install_effect(args.peers_dir)
        except entity_peers.PeerUnavailable as err:
            effect = f"could not be installed: {err}"
        step("installing Restate")
        try:
            restate = entity_peers.install_restate(args.peers_dir)
        except entity_peers.PeerUnavailable as err:
            restate = f"could not be installed: {err}"

    speed_before = machine.speed()
    load_before = _load()
    started = time.perf_counter()
    rows: list[Row] = []
    step("plait, volatile")
    rows += plait_volatile(sizes)
    step("plait, idle instances")
    idle = [plait_idle(sizes)]
    effect_persisted: list[Row] = []
    if isinstance(effect, str):
        effect_persisted = missing_rows("Effect", EFFECT_STORAGE, PERSISTED, effect)
        rows += missing_rows("Effect", "in process", VOLATILE, effect)
        idle += missing_rows("Effect", "in process", ["idle"], effect)
    elif pg_missing:
        effect_persisted = missing_rows("Effect", EFFECT_STORAGE, PERSISTED, pg_missing)
        rows += missing_rows("Effect", "in process", VOLATILE, pg_missing)
        idle += missing_rows("Effect", "in process", ["idle"], pg_missing)
    else:
        step("Effect, persisted, volatile and idle instances")
        effect_persisted, effect_volatile, effect_idle = effect_rows(effect, sizes, admin)
        rows += effect_volatile
        idle.append(effect_idle)
    rows += missing_rows(
        "Restate", "—", VOLATILE, "Restate journals every call (it has no volatile RPC)"
    )
    for backend in ("sqlite", "postgres"):
        if backend == "postgres" and pg_missing:
            rows += missing_rows("plait", "PostgreSQL", PERSISTED, pg_missing)
            continue
        step(f"plait, persisted, {STORAGE[backend]}")
        rows += plait_persisted(backend, sizes, admin)
    rows += effect_persisted
    if isinstance(restate, str):
        rows += missing_rows("Restate", RESTATE_STORAGE, PERSISTED, restate)
    else:
        step("Restate, persisted")
        rows += restate_rows(restate, sizes)
    rows += idle
    rows.append(
        Row(
            "Restate",
            "—",
            "idle",
            missing="no instance stays resident: a virtual object is its stored state",
        )
    )
    order = ["persisted-in-flight", "persisted-sequential", "volatile-in-flight"]
    order += ["volatile-sequential", "idle"]
    rows.sort(key=lambda r: order.index(r.workload))
    floor = None if pg_missing else insert_floor(admin)

    print()
    pg_version = "" if pg_missing else psql(admin, "show server_version")
    print(
        f"plait's entities vs Effect's cluster and Restate · Python {platform.python_version()}"
        f" · {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + (f" · PostgreSQL {pg_version}" if pg_version else "")
    )
    print(f"Machine speed before: {speed_before}; after: {machine.speed()}")
    print(f"Load average (1, 5, 15 min) before: {load_before}; after: {_load()}")
    for name, peer in (("Effect", effect), ("Restate", restate)):
        shown = peer if isinstance(peer, str) else peer.versions
        print(f"{name}: {shown}")
    print(
        f"Fresh store per system and kind; fresh entity ids per run; {sizes.warmup} warm-up"
        f" requests first. In flight: {sizes.persisted:,} persisted / {sizes.volatile:,}"
        f" volatile requests, request n to entity n mod {sizes.entities:,}, a new one starting"
        f" as one ends; latency = each request's own. One at a time: {sizes.sequential}"
        " requests to one warm instance. Idle: instances made by one volatile request each,"
        " no resident cap, growth per instance after garbage collection."
    )
    print(
        'Durability: plait durability="full" (SQLite WAL + synchronous=FULL; PostgreSQL'
        " synchronous_commit on), its counter state written with each persisted reply;"
        " Effect's SqlMessageStorage on the same server (message and reply rows), its counter"
        " in memory (Effect's entities have no durable state), max idle time raised to 10 min"
        " so no counter restarts mid-run; Restate's defaults (RocksDB with fsync, local log),"
        " the counter in the object's state, the client in this process over HTTP/1.1."
    )
    print()
    print(table(rows, sizes))
    print(
        "plait vs it: plait's RPCs/s over the peer's, the peer's p50 over plait's one at a"
        " time, the peer's memory over plait's; against plait on PostgreSQL for persisted"
        " RPCs, in process otherwise."
    )
    if isinstance(floor, list):
        floor.sort()
        p99 = floor[int(len(floor) * 0.99) - 1]
        print(
            "PostgreSQL floor, a bare durable INSERT round trip (psycopg, autocommit):"
            f" p50 {_ms(statistics.median(floor))} ms, p99 {_ms(p99)} ms"
        )
    elif floor is not None:
        notes.append(f"no PostgreSQL floor: {floor}")
    print()
    print("Issue 12's targets:")
    for line in targets(rows):
        print(f"- {line}")
    for note in notes:
        print(f"- {note}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
