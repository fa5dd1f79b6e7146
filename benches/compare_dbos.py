"""plait side by side with DBOS Transact, on the same machine and database server.

Runs the same workflows on plait and on DBOS (`pip install -r requirements-bench.txt`), on
SQLite and on PostgreSQL, each run on a fresh database, and prints one table:

    .venv/bin/python -m benches.compare_dbos [--quick] [--postgres ADMIN_URL]

Workloads: the workflow of three steps (x+1, x*2, x-1) one after another (300, or 100 with
`--quick`) and 1,000 in flight (two batches, or one), the same for the workflow with no step,
and a workflow of ten steps (100 in flight); plus plait's memory engine. Both
systems keep their default durability: plait `durability="full"`; DBOS as it configures
itself (SQLite rollback journal with `synchronous=FULL`, PostgreSQL `synchronous_commit` as
the server has it). In flight, both run as asyncio tasks: `asyncio.gather` of `execute`
calls for plait, and of DBOS async workflows called directly (each under its own
`SetWorkflowID`) for DBOS, whose checkpoints then run in its thread pool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib.metadata
import itertools
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import plait
from benches import machine
from plait import _native

System: TypeAlias = Literal["plait", "DBOS"]
Backend: TypeAlias = Literal["memory", "sqlite", "postgres"]
Call: TypeAlias = Callable[[int], Awaitable[int]]

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Makes DBOS workflow ids unique to this process; plait's keys are unique within it.
RUN = uuid.uuid4().hex[:12]
#: Seconds before a cell is given up as an error (DBOS runs ~20 workflows/s in flight).
CELL_TIMEOUT = 600.0
_fresh = itertools.count(1)
_databases = itertools.count(1)
#: Durability settings read back from the databases during the runs, for the report.
SETTINGS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workflow (`kind`) and how it is driven: one after another or `in_flight` at once."""

    kind: Literal["three", "none", "ten"]
    in_flight: int  # 0: one after another

    @property
    def steps(self) -> int:
        return {"three": 3, "none": 0, "ten": 10}[self.kind]

    @property
    def label(self) -> str:
        what = {"three": "3 steps", "none": "no step", "ten": "10 steps"}[self.kind]
        how = f"{self.in_flight:,} in flight" if self.in_flight else "one after another"
        return f"{what}, {how}"


def expected(kind: str, x: int) -> int:
    """The result every system must return for `x`."""
    return x + 10 if kind == "ten" else (x + 1) * 2 - 1


@dataclasses.dataclass
class Result:
    """One cell: `count` workflows of `workload` on `system` and `backend`."""

    system: System
    backend: Backend
    workload: Workload
    count: int = 0
    elapsed: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def quantile_ms(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1e3 if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1e3


# plait ---------------------------------------------------------------------------------------


@plait.activity
async def add_one(x: int) -> int:
    return x + 1


@plait.activity
async def double(x: int) -> int:
    return x * 2


@plait.activity
async def subtract_one(x: int) -> int:
    return x - 1


@plait.workflow(name="CompareThreeSteps", idempotency_key=lambda p: str(p.x))
async def plait_three_steps(x: int) -> int:
    return await subtract_one(await double(await add_one(x)))


@plait.workflow(name="CompareNoStep", idempotency_key=lambda p: str(p.x))
async def plait_no_step(x: int) -> int:
    return (x + 1) * 2 - 1


@plait.workflow(name="CompareTenSteps", idempotency_key=lambda p: str(p.x))
async def plait_ten_steps(x: int) -> int:
    for _ in range(10):
        x = await add_one(x)
    return x


PLAIT_WORKFLOWS: dict[str, plait.Workflow[Any, int]] = {
    "three": plait_three_steps,
    "none": plait_no_step,
    "ten": plait_ten_steps,
}


def plait_sql_missing() -> str | None:
    """Why plait's SQL engines cannot run in this build, or None when they can."""
    if not hasattr(_native, "Store"):
        return "plait._native has no Store yet (extension built before the SQL stores)"
    return None


def _plait_engine(backend: Backend, where: str) -> plait.Engine:
    if backend == "memory":
        return plait.Engine.memory()
    if backend == "sqlite":
        return plait.Engine.sqlite(where, durability="full")
    return plait.Engine.postgres(where, durability="full")


@contextlib.asynccontextmanager
async def plait_session(backend: Backend, where: str) -> AsyncIterator[Callable[[str], Call]]:
    """A started plait engine on `where`, as a function from workflow kind to call."""
    async with _plait_engine(backend, where) as engine:

        def caller(kind: str) -> Call:
            workflow = PLAIT_WORKFLOWS[kind]
            return lambda x: workflow.execute({"x": x}, engine=engine)

        yield caller
    if backend == "sqlite":  # WAL persists in the file; synchronous=FULL is per connection
        with contextlib.closing(sqlite3.connect(where)) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        SETTINGS["plait, sqlite"] = f'journal_mode={mode}, durability="full"'


# DBOS ----------------------------------------------------------------------------------------

_dbos_workflows: dict[str, Call] = {}


def _dbos() -> Any:
    """The `dbos` module: a benchmark-only dependency (requirements-bench.txt), imported by
    name so this file type-checks the same with or without it installed."""
    return importlib.import_module("dbos")


async def _inc(x: int) -> int:
    return x + 1


async def _double(x: int) -> int:
    return x * 2


async def _dec(x: int) -> int:
    return x - 1


def _register_dbos() -> dict[str, Call]:
    """Defines the DBOS steps and workflows once (DBOS registers them process-wide)."""
    if _dbos_workflows:
        return _dbos_workflows
    dbos = _dbos().DBOS
    add_one: Call = dbos.step(name="add_one")(_inc)
    double: Call = dbos.step(name="double")(_double)
    subtract_one: Call = dbos.step(name="subtract_one")(_dec)

    async def three_steps(x: int) -> int:
        return await subtract_one(await double(await add_one(x)))

    async def no_step(x: int) -> int:
        return (x + 1) * 2 - 1

    async def ten_steps(x: int) -> int:
        for _ in range(10):
            x = await add_one(x)
        return x

    _dbos_workflows.update(
        three=dbos.workflow(name="CompareThreeSteps")(three_steps),
        none=dbos.workflow(name="CompareNoStep")(no_step),
        ten=dbos.workflow(name="CompareTenSteps")(ten_steps),
    )
    return _dbos_workflows


def _dbos_settings(backend: Backend) -> str:
    """The durability settings on DBOS's own connections, read back from the database."""
    text = importlib.import_module("sqlalchemy").text
    engine = importlib.import_module("dbos._dbos")._get_dbos_instance()._sys_db.engine
    with engine.connect() as conn:
        if backend == "sqlite":
            mode = conn.execute(text("PRAGMA journal_mode")).scalar()
            sync = conn.execute(text("PRAGMA synchronous")).scalar()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            return f"journal_mode={mode}, synchronous={names.get(int(sync), sync)}"
        commit = conn.execute(text("SHOW synchronous_commit")).scalar()
        fsync = conn.execute(text("SHOW fsync")).scalar()
        return f"synchronous_commit={commit}, fsync={fsync}"


@contextlib.asynccontextmanager
async def dbos_session(backend: Backend, url: str) -> AsyncIterator[Callable[[str], Call]]:
    """DBOS launched on `url` with its default settings, as a function from kind to call."""
    dbos = _dbos()
    workflows = _register_dbos()
    # Only the name, the database and less logging: every durability setting is DBOS's own.
    config = {"name": "plait-compare", "system_database_url": url, "log_level": "WARNING"}
    dbos.DBOS(config=config)
    try:
        dbos.DBOS.launch()
        SETTINGS[f"DBOS, {backend}"] = _dbos_settings(backend)

        def caller(kind: str) -> Call:
            workflow = workflows[kind]

            async def call(x: int) -> int:
                with dbos.SetWorkflowID(f"{kind}-{RUN}-{x}"):
                    return await workflow(x)

            return call

        yield caller
    finally:
        dbos.DBOS.destroy()


# Databases -----------------------------------------------------------------------------------


def psql(admin_url: str, sql: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", admin_url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {done.stderr.strip()}")
    return done.stdout.strip()


def postgres_missing(admin_url: str = POSTGRES_ADMIN) -> str | None:
    """Why PostgreSQL cannot be used at `admin_url`, or None when it can."""
    if shutil.which("psql") is None:
        return "psql is not installed"
    try:
        psql(admin_url, "select 1", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return f"PostgreSQL unreachable at {admin_url}: {err}"
    return None


def _database_url(admin_url: str, database: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.contextmanager
def fresh_database(system: System, backend: Backend, admin_url: str) -> Iterator[str]:
    """A new empty database for one run, removed afterwards: a path or URL as `system` takes
    it (SQLite: a file in a new temporary directory; PostgreSQL: a database of its own)."""
    if backend == "memory":
        yield ""
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="plait-compare-") as tmp:
            path = os.path.join(tmp, "journal.sqlite")
            yield path if system == "plait" else f"sqlite:///{path}"
    else:
        name = f"compare_{system.lower()}_{os.getpid()}_{next(_databases)}"
        psql(admin_url, f'CREATE DATABASE "{name}"')
        try:
            yield _database_url(admin_url, name)
        finally:
            psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Measuring -----------------------------------------------------------------------------------


async def measure(call: Call, kind: str, count: int, in_flight: int) -> tuple[float, list[float]]:
    """Runs `count` workflows on fresh inputs; returns the elapsed time and each latency.

    With `in_flight`, they run in batches of that many at once (`asyncio.gather`), one batch
    after another; a workflow's latency runs from the start of its batch to its completion.
    """
    xs = [next(_fresh) for _ in range(count)]
    results: list[int] = []
    latencies: list[float] = []
    elapsed = 0.0
    if in_flight:
        for at in range(0, count, in_flight):
            start = time.perf_counter()

            async def timed(x: int, start: float = start) -> tuple[int, float]:
                result = await call(x)
                return result, time.perf_counter() - start

            pairs = await asyncio.gather(*(timed(x) for x in xs[at : at + in_flight]))
            elapsed += time.perf_counter() - start
            results += [result for result, _ in pairs]
            latencies += [latency for _, latency in pairs]
    else:
        start = time.perf_counter()
        for x in xs:
            began = time.perf_counter()
            results.append(await call(x))
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    wrong = [(x, r) for x, r in zip(xs, results, strict=True) if r != expected(kind, x)]
    if wrong:
        raise AssertionError(f"{kind}: wrong results (x, result) {wrong[:5]}")
    return elapsed, latencies


def run_session(
    system: System,
    backend: Backend,
    plan: Sequence[tuple[Workload, int]],
    *,
    admin_url: str = POSTGRES_ADMIN,
    warmup: int = 5,
    timeout: float | None = None,
) -> list[Result]:
    """Runs each (workload, count) of `plan` on one fresh database, in one session of `system`.

    Each workload starts with `warmup` workflows not measured. Raises on any failure,
    and `TimeoutError` after `timeout` seconds.
    """
    session = plait_session if system == "plait" else dbos_session

    async def go(where: str) -> list[Result]:
        results = []
        async with session(backend, where) as caller:
            for workload, count in plan:
                call = caller(workload.kind)
                await measure(call, workload.kind, warmup, in_flight=0)
                elapsed, latencies = await measure(
                    call, workload.kind, count, in_flight=workload.in_flight
                )
                results.append(Result(system, backend, workload, count, elapsed, latencies))
        return results

    with fresh_database(system, backend, admin_url) as where:
        return asyncio.run(asyncio.wait_for(go(where), timeout))


def run_cell(
    system: System, backend: Backend, workload: Workload, count: int, admin_url: str
) -> Result:
    """One cell on its own fresh database; a failure is kept in the result, not raised."""
    try:
        plan = [(workload, count)]
        return run_session(system, backend, plan, admin_url=admin_url, timeout=CELL_TIMEOUT)[0]
    except Exception as err:
        return Result(system, backend, workload, error=f"{type(err).__name__}: {err}")


def insert_floor(admin_url: str, rounds: int = 300) -> list[float] | str:
    """One bare durable INSERT round trip after another on the PostgreSQL server, in ms.

    The floor under any durable commit from this machine: a statement in autocommit with the
    server's default `synchronous_commit` (a WAL flush per INSERT), on psycopg (which DBOS
    brings). Returns why it could not be measured instead, if it could not.
    """
    try:
        # A benchmark-only dependency, imported by name so that checks run without it.
        psycopg = importlib.import_module("psycopg")
    except ImportError:
        return "psycopg is not installed (it comes with requirements-bench.txt)"
    with (
        fresh_database("plait", "postgres", admin_url) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        conn.execute("CREATE TABLE floor (id BIGINT PRIMARY KEY, value TEXT NOT NULL)")
        latencies = []
        for n in range(rounds + 10):
            started = time.perf_counter()
            conn.execute("INSERT INTO floor VALUES (%s, %s)", (n, "x"))
            if n >= 10:  # the first few warm the connection and the plan
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# Report --------------------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def table(results: Sequence[Result]) -> str:
    """The results as one Markdown table; plait rows carry plait/DBOS workflows/s."""
    dbos = {(r.backend, r.workload): r for r in results if r.system == "DBOS" and not r.error}
    header = [
        "system",
        "backend",
        "workload",
        "workflows/s",
        "steps/s",
        "p50 ms",
        "p99 ms",
        "plait/DBOS",
    ]
    rows = [header]
    for r in results:
        if r.error:
            rows.append([r.system, r.backend, r.workload.label, "error", "", "", "", ""])
            continue
        other = dbos.get((r.backend, r.workload)) if r.system == "plait" else None
        ratio = f"{r.per_second / other.per_second:,.1f}x" if other and other.per_second else ""
        steps = _rate(r.per_second * r.workload.steps) if r.workload.steps else ""
        rows.append(
            [
                r.system,
                r.backend,
                r.workload.label,
                _rate(r.per_second),
                steps,
                _ms(r.quantile_ms(50)),
                _ms(r.quantile_ms(99)),
                ratio,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5, 6, 7}

    def line(row: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def _server(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every cell and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer workflows per row")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL of the server")
    parser.add_argument("--in-flight", type=int, default=1_000, help="workflows in flight")
    args = parser.parse_args(argv)
    sequential = 100 if args.quick else 300
    batches = 1 if args.quick else 2
    in_flight: int = args.in_flight
    workloads = [
        (Workload("three", 0), sequential),
        (Workload("three", in_flight), in_flight * batches),
        (Workload("none", 0), sequential),
        (Workload("none", in_flight), in_flight * batches),
        (Workload("ten", 0), sequential // 3),
        (Workload("ten", 100), 100 * batches),
    ]

    notes: list[str] = []
    dbos_missing = None if _version("dbos") != "not installed" else "dbos is not installed"
    sql_missing = plait_sql_missing()
    pg_missing = postgres_missing(args.postgres)
    for reason in (dbos_missing, sql_missing, pg_missing):
        if reason:
            notes.append(f"skipped: {reason}")
    pg_version = "" if pg_missing else psql(args.postgres, "show server_version")

    speed_before = machine.speed()
    results: list[Result] = []
    started = time.perf_counter()
    backends: list[Backend] = ["memory", "sqlite", "postgres"]
    for backend in backends:
        if backend == "postgres" and pg_missing:
            continue
        systems: list[System] = ["plait"] if backend == "memory" else ["plait", "DBOS"]
        for workload, count in workloads:
            for system in systems:
                if (system == "DBOS" and dbos_missing) or (
                    system == "plait" and backend != "memory" and sql_missing
                ):
                    continue
                print(f"  {system:5} {backend:8} {workload.label} ...", end="", flush=True)
                gc.collect()  # garbage of the previous cell is not this one's cost
                result = run_cell(system, backend, workload, count, args.postgres)
                shown = result.error or f"{_rate(result.per_second)} workflows/s"
                print(f" {shown}", flush=True)
                results.append(result)
                if result.error:
                    notes.append(f"{system}, {backend}, {workload.label}: {result.error}")

    print()
    print(
        f"plait vs DBOS Transact {_version('dbos')} · Python {platform.python_version()}"
        f" · {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + (f" · PostgreSQL {pg_version} at {_server(args.postgres)}" if pg_version else "")
    )
    print(f"Machine speed before: {speed_before}; after: {machine.speed()}")
    print(
        "Fresh database per row; fresh inputs and ids per workflow; asyncio event loop."
        f" Sequential rows: {sequential} workflows (10 steps: {sequential // 3}); in flight:"
        f" {batches} batch(es) one after another, latency = batch start to completion."
        " Warm-up: 5 workflows per row."
    )
    print(
        'Durability: plait durability="full" (SQLite WAL + synchronous=FULL; PostgreSQL'
        " synchronous_commit on); DBOS defaults, read back: "
        + ("; ".join(f"{k}: {v}" for k, v in sorted(SETTINGS.items())) or "n/a")
    )
    print(
        "DBOS concurrency: async workflows and steps awaited directly under SetWorkflowID,"
        " asyncio.gather of the batch (checkpoints in DBOS's own thread pool)."
    )
    floor = None if pg_missing else insert_floor(args.postgres)
    print()
    print(table(results))
    print("plait/DBOS: plait's workflows/s over DBOS's, same backend and workload.")
    if isinstance(floor, list):
        floor.sort()
        sequential_pg = next(
            (
                r
                for r in results
                if r.system == "plait"
                and r.backend == "postgres"
                and r.workload == Workload("three", 0)
                and not r.error
            ),
            None,
        )
        beside = (
            f"; plait's 3 steps one after another: p50 {_ms(sequential_pg.quantile_ms(50))} ms"
            f" = {sequential_pg.quantile_ms(50) / statistics.median(floor):.1f} round trips"
            " (4 commits in series)"
            if sequential_pg
            else ""
        )
        print(
            f"PostgreSQL floor, a bare durable INSERT round trip (psycopg, autocommit):"
            f" p50 {_ms(statistics.median(floor))} ms,"
            f" p99 {_ms(floor[int(len(floor) * 0.99) - 1])} ms{beside}"
        )
    elif floor is not None:
        notes.append(f"no PostgreSQL floor: {floor}")
    for note in notes:
        print(f"- {note}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
