"""Workflows on a cluster of 1, 2 and 3 runner processes on PostgreSQL, beside Effect and DBOS.

    .venv/bin/python -m benches.cluster_workflows [--workflows N] [--runners 1,2,3]
        [--postgres ADMIN_URL] [--port BASE] [--profile]
        [--effect [--effect-workflows N]] [--dbos [--dbos-workflows N]] [--peers-dir DIR]

Each run gets a fresh database. The runners (`benches/cluster_workflow_runner.py`, real
processes) join, the bench waits until the ring's 300 shards are all held, then each runner
starts its share of the workflows (`BenchClusterThreeSteps`: three activities, x+1, x*2, x-1,
each committed before the next, plait's default `durability="full"`), 1,000 in flight over the
whole cluster, each awaited for its result (and, first, the same on one engine with no
cluster, `Engine.postgres` in this process: the single-process figure). Each execution runs on
the runner holding its execution id's shard, so with two or three runners most run on a runner
other than the one that started them. The figure is workflows over the time from the first
runner's first start to the last one's last result. This machine has 2 cores: the runner
processes share them, and the database too.

With `--effect`, Effect 4's `ClusterWorkflowEngine` runs the same workload after plait's, in
the same invocation (`benches/effect_cluster/workflow_cluster.ts`): socket runners
(`NodeClusterSocket`), one node process each, its SQL message and runner storage on the same
PostgreSQL (a fresh database per run), each execution an entity on its shard's runner. It is
slower, so it runs fewer workflows (`--effect-workflows`; the rate is computed the same way).
Its pinned npm packages are installed under `--peers-dir` (default /tmp/plait-entity-peers),
never into the project.

With `--dbos`, DBOS Transact runs the same three-step workflow on the same PostgreSQL (a fresh
database) in one process, 1,000 in flight, with `benches/compare_dbos.py`'s DBOS session: one
process, because a DBOS process runs the workflows it starts itself (several processes on one
database would be several independent executors, not a cluster that spreads work). If DBOS is
not importable here it is pip-installed from `requirements-bench.txt` with `--target` under the
peers directory and run in a child process with that folder on its path, never into plait's
environment. If a peer cannot be installed or run, the reason is printed in its column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import plait
from benches import cluster, entity_peers, machine
from benches.cluster import SHARDS, Measured, _load, _settled, _stopped, _wait
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing, psql

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 1_000
#: Seconds one of Effect's runs may take (it stops itself then).
EFFECT_TIMEOUT = 240
#: Seconds DBOS's run may take.
DBOS_TIMEOUT = 600
# The ports given to this benchmark on the shared build machine: plait's runners from PORT,
# Effect's from PORT + 10.
PORT = 4950


@dataclasses.dataclass(frozen=True)
class Run(Measured):
    """A plait run: its figure, and what its database held at the end: the bench's executions
    by status and their journal rows (each execution's three activity results)."""

    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    journal_rows: int = 0
    #: CPU seconds each runner process used from its first start to its last result.
    runner_cpu: tuple[float, ...] = ()
    #: CPU seconds every `postgres` process of this machine used over the run (the server is
    #: shared with other work, so an upper bound on this run's share) and the machine's busy
    #: CPU seconds over the same time, all processes.
    postgres_cpu: float = 0.0
    machine_cpu: float = 0.0


def _postgres_cpu() -> float:
    """CPU seconds (user + system) of every process named `postgres` on this machine, from
    /proc; 0 where there is no /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """CPU seconds all CPUs of this machine spent busy since boot (not idle, not iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def census(url: str) -> tuple[dict[str, int], int]:
    """The bench workflow's executions by status, and their journal rows, in the database."""
    workflow = "BenchClusterThreeSteps"
    rows = psql(
        url,
        f"select status, count(*) from plait_executions where workflow = '{workflow}'"
        " group by status",
    )
    statuses = {
        status: int(count) for status, count in (line.split("|") for line in rows.splitlines())
    }
    journal = psql(
        url,
        "select count(*) from plait_journal j join plait_executions e on e.no = j.execution_no"
        f" where e.workflow = '{workflow}'",
    )
    return statuses, int(journal)


def run(
    admin_url: str,
    runners: int,
    workflows: int,
    port: int = PORT,
    *,
    in_flight: int = IN_FLIGHT,
    profile: Path | None = None,
) -> Run:
    """`workflows` three-step workflows over `runners` runner processes (ports from `port`).

    With `profile`, the first runner runs under cProfile and its statistics land there.
    """
    database = f"plait_bench_wfcluster_{uuid.uuid4().hex[:10]}"
    psql(admin_url, f"create database {database}")
    url = f"{admin_url.rsplit('/', 1)[0]}/{database}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The runners stop before their folder goes: they write their views into it.
        with (
            tempfile.TemporaryDirectory(prefix="plait-bench-wfcluster-") as folder,
            contextlib.ExitStack() as logs,
            _stopped(processes),
        ):
            out = Path(folder)
            ports = [port + i for i in range(runners)]
            for index, runner_port in enumerate(ports):
                args = [url, runner_port, out, index, runners, workflows, in_flight // runners]
                if profile is not None and index == 0:
                    args.append("profile")
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "benches.cluster_workflow_runner", *map(str, args)],
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=logs.enter_context(open(out / f"log-{runner_port}", "wb")),
                    )
                )
            _wait(lambda: _settled(out, ports), processes, out, ports, 120)
            postgres_cpu, machine_cpu = _postgres_cpu(), _machine_cpu()
            (out / "go").touch()
            _wait(
                lambda: all((out / f"done-{p}.json").exists() for p in ports),
                processes,
                out,
                ports,
                600,
            )
            postgres_cpu, machine_cpu = (
                _postgres_cpu() - postgres_cpu,
                _machine_cpu() - machine_cpu,
            )
            done = [json.loads((out / f"done-{p}.json").read_text()) for p in ports]
            results = sum(d["results"] for d in done)
            assert results == workflows, f"{results} results for {workflows} workflows"
            if profile is not None:
                (out / f"profile-{ports[0]}.pstats").replace(profile)
            elapsed: float = max(d["ended"] for d in done) - min(d["began"] for d in done)
            statuses, journal_rows = census(url)
            cpu = tuple(float(d["cpu"]) for d in done)
            return Run(workflows, elapsed, statuses, journal_rows, cpu, postgres_cpu, machine_cpu)
    finally:
        psql(admin_url, f"drop database if exists {database} with (force)")


def run_single(admin_url: str, workflows: int) -> Measured:
    """The same workflows on one plait engine in this process (`Engine.postgres`, no cluster):
    the single-process figure beside the runners', in the same sitting, on a fresh database."""
    from benches.cluster_workflow_runner import Start, ThreeSteps, expected

    async def go(url: str) -> float:
        async with plait.Engine.postgres(url) as engine:
            pending = iter(range(workflows))

            async def sender() -> None:
                for n in pending:
                    result = await ThreeSteps.execute(Start(n=n), engine=engine)
                    if result != expected(n):
                        raise AssertionError(f"workflow {n}: {result}, not {expected(n)}")

            began = time.time()
            await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
            return time.time() - began

    database = f"plait_bench_wfsingle_{uuid.uuid4().hex[:10]}"
    psql(admin_url, f"create database {database}")
    try:
        return Measured(workflows, asyncio.run(go(f"{admin_url.rsplit('/', 1)[0]}/{database}")))
    finally:
        psql(admin_url, f"drop database if exists {database} with (force)")


# Effect ----------------------------------------------------------------------------------------


def install_effect(base: Path) -> tuple[Path, str]:
    """Installs Effect's workflow programs (see `benches.cluster.install_effect`)."""
    return cluster.install_effect(base, ("workflow_cluster.ts", "workflow_runner.ts"))


def run_effect(
    folder: Path, admin_url: str, runners: int, workflows: int, port: int = PORT + 10
) -> Measured:
    """Effect's workflows over `runners` socket runner processes, on a fresh database.

    Raises:
        entity_peers.PeerUnavailable: the run failed or took longer than `EFFECT_TIMEOUT`.
    """
    return cluster.run_effect(
        folder,
        admin_url,
        runners,
        workflows,
        port,
        program="workflow_cluster.ts",
        counted="workflows",
        timeout=EFFECT_TIMEOUT,
        options={},
    )


# DBOS ------------------------------------------------------------------------------------------


def install_dbos(base: Path) -> list[str]:
    """The folders to put on a child's path so that it imports DBOS: none if this interpreter
    already does, else a `pip install --target` of requirements-bench.txt under `base`.

    Raises:
        entity_peers.PeerUnavailable: the install failed.
    """
    if importlib.util.find_spec("dbos") is not None:
        return []
    site = base / "dbos-site"
    if not (site / "dbos").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        requirements = str(ROOT / "requirements-bench.txt")
        entity_peers._run(
            [*pip, "--target", str(site), "-r", requirements], ROOT, "pip install dbos"
        )
    return [str(site)]


def run_dbos(admin_url: str, workflows: int, paths: list[str]) -> tuple[Measured, str]:
    """DBOS's three-step workflow, `IN_FLIGHT` at a time in one process on a fresh database;
    the figure and DBOS's version.

    Raises:
        entity_peers.PeerUnavailable: the run failed.
    """
    env = dict(os.environ)
    # The DBOS folder after plait's source (so plait is this worktree's) and before the venv.
    env["PYTHONPATH"] = os.pathsep.join(
        [*filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), *paths]
    )
    args = [sys.executable, "-m", "benches.cluster_workflows", "--dbos-child", str(workflows)]
    args += ["--postgres", admin_url]
    try:
        done = subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DBOS_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise entity_peers.PeerUnavailable(f"DBOS: not done within {DBOS_TIMEOUT} s") from None
    try:
        line = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("{")))
        return Measured(int(line["workflows"]), float(line["seconds"])), str(line["version"])
    except (StopIteration, ValueError, KeyError):
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise entity_peers.PeerUnavailable(
            f"DBOS failed (exit {done.returncode}): {tail}"
        ) from None


def dbos_child(admin_url: str, workflows: int) -> None:
    """In the child process: DBOS's run, printed as one JSON line."""
    from benches import compare_dbos

    async def go(url: str) -> float:
        async with compare_dbos.dbos_session("postgres", url) as caller:
            call = caller("three")
            pending = iter(range(workflows))

            async def sender() -> None:
                for x in pending:
                    result = await call(x)
                    if result != compare_dbos.expected("three", x):
                        raise AssertionError(f"DBOS workflow {x}: {result}")

            began = time.time()
            await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
            return time.time() - began

    with compare_dbos.fresh_database("DBOS", "postgres", admin_url) as url:
        seconds = asyncio.run(go(url))
    version = compare_dbos._version("dbos")
    print(json.dumps({"workflows": workflows, "seconds": seconds, "version": version}))


# Report ----------------------------------------------------------------------------------------


def _cell(measured: Measured | str | None) -> str:
    if measured is None:
        return "-"
    if isinstance(measured, str):
        return measured
    return f"{measured.rps:,.0f} ({measured.requests:,} in {measured.seconds:.1f} s)"


def _ratio(ours: Measured, theirs: Measured | str | None) -> str:
    return f"{ours.rps / theirs.rps:.1f}x" if isinstance(theirs, Measured) else "-"


def _hot_spots(path: Path, lines: int = 25) -> None:
    """Prints the profile's functions by their own time and by cumulative time."""
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--runners", default="1,2,3")
    parser.add_argument(
        "--postgres", default=os.environ.get("PLAIT_BENCH_POSTGRES", POSTGRES_ADMIN)
    )
    parser.add_argument("--port", type=int, default=PORT, help="plait's first runner port")
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile the first runner of each plait run into this file (suffixed .<runners>)",
    )
    parser.add_argument("--effect", action="store_true", help="also Effect's ClusterWorkflowEngine")
    parser.add_argument("--effect-workflows", type=int, default=3_000)
    parser.add_argument("--dbos", action="store_true", help="also DBOS, in one process")
    parser.add_argument("--dbos-workflows", type=int, default=2_000)
    parser.add_argument("--peers-dir", type=Path, default=entity_peers.DEFAULT_DIR)
    parser.add_argument("--dbos-child", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.dbos_child is not None:
        dbos_child(options.postgres, options.dbos_child)
        return
    missing = postgres_missing(options.postgres)
    if missing:
        print(f"skipped: {missing}")
        return
    counts = [int(n) for n in options.runners.split(",")]
    print(f"{os.cpu_count()} CPUs; {machine.speed()}; {_load()}")
    print(
        f"workflows of 3 activities, {IN_FLIGHT:,} in flight over the cluster, {SHARDS} shards,"
        " a fresh PostgreSQL database per run"
    )
    print(f"plait, {options.workflows:,} workflows:")
    single = run_single(options.postgres, options.workflows)
    print(
        f"  one engine, no cluster (Engine.postgres in one process): {single.rps:>9,.0f}"
        f" workflows/s  ({single.seconds:.1f} s; {_load()})",
        flush=True,
    )
    plait_figures: dict[int, Measured] = {}
    for count in counts:
        profile = None
        if options.profile is not None:
            profile = options.profile.with_name(f"{options.profile.name}.{count}")
        figure = run(options.postgres, count, options.workflows, options.port, profile=profile)
        plait_figures[count] = figure
        base = plait_figures[counts[0]].rps
        print(
            f"  {count} runner(s): {figure.rps:>9,.0f} workflows/s"
            f"  ({figure.seconds:.1f} s; {figure.rps / base:.2f}x of {counts[0]}; {_load()})",
            flush=True,
        )
        print(
            f"    CPU over the run: runners {', '.join(f'{c:.2f}' for c in figure.runner_cpu)} s,"
            f" postgres (the whole server) {figure.postgres_cpu:.2f} s,"
            f" the machine (all processes) {figure.machine_cpu:.2f} s,"
            f" of {figure.seconds * (os.cpu_count() or 1):.2f} CPU-seconds",
            flush=True,
        )
        if profile is not None:
            print(f"  profile of its first runner: {profile}")
            _hot_spots(profile)
    effect_figures: dict[int, Measured | str] = {}
    if options.effect:
        try:
            folder, versions = install_effect(options.peers_dir)
        except entity_peers.PeerUnavailable as err:
            print(f"Effect skipped: {err}")
            effect_figures = dict.fromkeys(counts, "skipped")
        else:
            print(
                f"Effect's ClusterWorkflowEngine ({versions}), socket runners, SQL storage,"
                f" {options.effect_workflows:,} workflows:"
            )
            for count in counts:
                try:
                    measured = run_effect(
                        folder, options.postgres, count, options.effect_workflows, options.port + 10
                    )
                except entity_peers.PeerUnavailable as err:
                    print(f"  {count} runner(s): failed: {err}")
                    effect_figures[count] = "failed"
                    continue
                effect_figures[count] = measured
                print(
                    f"  {count} runner(s): {measured.rps:>9,.0f} workflows/s"
                    f"  ({measured.seconds:.1f} s; {_load()})",
                    flush=True,
                )
    dbos_figure: Measured | str | None = None
    if options.dbos:
        try:
            dbos_figure, version = run_dbos(
                options.postgres, options.dbos_workflows, install_dbos(options.peers_dir)
            )
        except entity_peers.PeerUnavailable as err:
            print(f"DBOS skipped: {err}")
            dbos_figure = "failed"
        else:
            print(
                f"DBOS Transact {version}, one process, {options.dbos_workflows:,} workflows:"
                f" {dbos_figure.rps:,.1f} workflows/s ({dbos_figure.seconds:.1f} s; {_load()})"
            )
    print()
    header = ["runners", "plait workflows/s", "Effect workflows/s", "plait / Effect"]
    if options.dbos:
        header.append("plait / DBOS (1 process)")
    rows: list[list[str]] = []
    for count in counts:
        ours, theirs = plait_figures[count], effect_figures.get(count)
        row = [str(count), _cell(ours), _cell(theirs), _ratio(ours, theirs)]
        if options.dbos:
            row.append(_ratio(ours, dbos_figure))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"  plait, one engine with no cluster: {_cell(single)} workflows/s")
    if options.dbos:
        print(f"  DBOS, one process: {_cell(dbos_figure)} workflows/s")
    print(f"{machine.speed()}; {_load()}")


if __name__ == "__main__":
    main()
