"""Persisted entity RPCs over a cluster of 1, 2 and 3 runner processes on one PostgreSQL.

    .venv/bin/python -m benches.cluster [--requests N] [--runners 1,2,3] [--postgres ADMIN_URL]
        [--port BASE] [--effect [--effect-requests N] [--peers-dir DIR]]

Each run gets a fresh database. The runners (`benches/cluster_runner.py`, real processes) join,
the bench waits until the ring's shards are all held, then each runner sends its share of the
requests: persisted (saved before they run, a unique primary key each, the reply stored), to
entities spread over the shards, so most go to an entity on another runner (saved, then sent
to its owner over the runners' transport; the stored reply comes back on the caller's long
poll). 1,000 requests are in flight over
the whole cluster. The figure is requests over the time from the first runner's start to the
last one's end. This machine has 2 cores: 3 runner processes share them, and the database too.

With `--effect`, Effect 4's cluster runs the same workload after plait's, in the same
invocation: its runners are socket runners (`NodeClusterSocket`), one node process each, with
its SQL message and runner storage on the same PostgreSQL (a fresh database per run), and an
entity whose RPC is persisted with the request's key as its primary key
(`benches/effect_cluster/`). It is slower, so it sends fewer requests (`--effect-requests`,
10,000 by default; the rate is computed the same way). Its pinned npm packages are installed
under `--peers-dir` (default /tmp/plait-entity-peers), never into the project; if node or npm
is missing, or the install or a run fails, the reason is printed in Effect's column. The
runners listen on ports from `--port` (plait's) and `--port` + 10 (Effect's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from benches import entity_peers, machine
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing, psql

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 300
IN_FLIGHT = 1_000
ENTITIES = 10_000
#: Effect's side: its program, and the seconds one of its runs may take (it stops itself then).
EFFECT_SOURCE = ROOT / "benches" / "effect_cluster"
EFFECT_TIMEOUT = 180
PORT = 4700


@dataclasses.dataclass(frozen=True)
class Measured:
    """`requests` replied in `seconds`, from the first runner's start to the last one's end."""

    requests: int
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _views(out: Path, ports: list[int]) -> list[dict[str, float]] | None:
    views = []
    for port in ports:
        path = out / f"view-{port}.json"
        if not path.exists():
            return None
        views.append(json.loads(path.read_text()))
    return views


def _settled(out: Path, ports: list[int]) -> bool:
    views = _views(out, ports)
    if views is None:
        return False
    return (
        all(v["healthy"] == len(ports) and v["shards"] == v["assigned"] for v in views)
        and all(v["releasing"] == 0 for v in views)
        and sum(v["shards"] for v in views) == SHARDS
    )


def run(
    admin_url: str, runners: int, requests: int, port: int = PORT, *, volatile: bool = False
) -> Measured:
    """Persisted (or volatile) RPCs over `runners` runner processes (ports from `port`)."""
    database = f"plait_bench_cluster_{uuid.uuid4().hex[:10]}"
    psql(admin_url, f"create database {database}")
    url = f"{admin_url.rsplit('/', 1)[0]}/{database}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The runners stop before their folder goes: they write their views into it.
        with (
            tempfile.TemporaryDirectory(prefix="plait-bench-cluster-") as folder,
            _stopped(processes),
        ):
            out = Path(folder)
            ports = [port + i for i in range(runners)]
            for index, port in enumerate(ports):
                args = [url, port, out, index, runners, requests, IN_FLIGHT // runners, ENTITIES]
                if volatile:
                    args.append("volatile")
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "benches.cluster_runner", *map(str, args)],
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=open(out / f"log-{port}", "wb"),  # noqa: SIM115
                    )
                )
            _wait(lambda: _settled(out, ports), processes, out, ports, 120)
            (out / "go").touch()
            _wait(
                lambda: all((out / f"done-{p}.json").exists() for p in ports),
                processes,
                out,
                ports,
                600,
            )
            done = [json.loads((out / f"done-{p}.json").read_text()) for p in ports]
            assert sum(d["replies"] for d in done) == requests
            elapsed: float = max(d["ended"] for d in done) - min(d["began"] for d in done)
            return Measured(requests, elapsed)
    finally:
        psql(admin_url, f"drop database if exists {database} with (force)")


@contextlib.contextmanager
def _stopped(processes: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Stops (SIGTERM, then SIGKILL after 30 s) the processes started inside the block."""
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait(
    ready: Callable[[], bool],
    processes: list[subprocess.Popen[bytes]],
    out: Path,
    ports: list[int],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for process, port in zip(processes, ports, strict=True):
            if process.poll() is not None:
                log = (out / f"log-{port}").read_text()[-2000:]
                raise RuntimeError(f"runner {port} exited: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within {timeout} s")
        time.sleep(0.05)


def install_effect(
    base: Path, programs: tuple[str, ...] = ("cluster.ts", "runner.ts")
) -> tuple[Path, str]:
    """Installs Effect's `programs` (of `benches/effect_cluster/`) and its pinned npm packages
    under `base`; its folder and the versions.

    Raises:
        entity_peers.PeerUnavailable: node or npm is missing, or the install failed.
    """
    into = base / "effect-cluster"
    # An absolute source folder: entity_peers copies from it as from benches/peers/<folder>.
    entity_peers._npm_install(EFFECT_SOURCE, into)
    entity_peers._copy(EFFECT_SOURCE, list(programs), into)
    versions = []
    for package in ("effect", "@effect/platform-node", "@effect/sql-pg"):
        try:
            manifest = into / "node_modules" / package / "package.json"
            versions.append(f"{package} {json.loads(manifest.read_text())['version']}")
        except (OSError, ValueError, KeyError):
            versions.append(f"{package} ?")
    node = entity_peers._run(["node", "--version"], into, "node --version", timeout=30).strip()
    return into, f"{', '.join(versions)}, node {node}"


def run_effect(
    folder: Path,
    admin_url: str,
    runners: int,
    requests: int,
    port: int = PORT + 10,
    *,
    program: str = "cluster.ts",
    counted: str = "requests",
    timeout: int = EFFECT_TIMEOUT,
    options: dict[str, int] | None = None,
) -> Measured:
    """Effect's `program` over `runners` socket runner processes, on a fresh database: its
    persisted RPCs by default (`counted` names what its result line counts).

    Raises:
        entity_peers.PeerUnavailable: the run failed or took longer than `timeout`.
    """
    database = f"plait_bench_cluster_effect_{uuid.uuid4().hex[:10]}"
    psql(admin_url, f"create database {database}")
    url = f"{admin_url.rsplit('/', 1)[0]}/{database}"
    given = {"portBase": port, "inFlight": IN_FLIGHT, "timeout": timeout}
    given |= {"entities": ENTITIES} if options is None else options
    args = [url, str(runners), str(requests), json.dumps(given)]
    try:
        out = entity_peers._run(
            ["node", "--import", "tsx", program, *args],
            folder,
            f"Effect on {runners} runner(s)",
            timeout=timeout + 60,
        )
    finally:
        psql(admin_url, f"drop database if exists {database} with (force)")
    try:
        line = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
        return Measured(int(line[counted]), float(line["seconds"]))
    except (StopIteration, ValueError, KeyError) as err:
        raise entity_peers.PeerUnavailable(f"Effect printed no result ({err}): {out}") from None


def _load() -> str:
    """The machine's load average over the last minute (other work shares these CPUs)."""
    return f"load {os.getloadavg()[0]:.1f}"


def _cell(measured: Measured | str | None) -> str:
    if measured is None:
        return "-"
    if isinstance(measured, str):
        return measured
    return f"{measured.rps:,.0f} ({measured.requests:,} in {measured.seconds:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # 50,000: a run of 20,000 took plait 1-2 s, much of it the first request of each of the
    # 10,000 entities reading its state.
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runners", default="1,2,3")
    parser.add_argument(
        "--postgres", default=os.environ.get("PLAIT_BENCH_POSTGRES", POSTGRES_ADMIN)
    )
    parser.add_argument("--port", type=int, default=PORT, help="plait's first runner port")
    parser.add_argument("--effect", action="store_true", help="also run Effect's cluster")
    parser.add_argument(
        "--volatile", action="store_true", help="also volatile RPCs across runners (plait only)"
    )
    parser.add_argument("--effect-requests", type=int, default=10_000)
    parser.add_argument("--peers-dir", type=Path, default=entity_peers.DEFAULT_DIR)
    options = parser.parse_args()
    missing = postgres_missing(options.postgres)
    if missing:
        print(f"skipped: {missing}")
        return
    counts = [int(n) for n in options.runners.split(",")]
    print(f"{os.cpu_count()} CPUs; {machine.speed()}")
    print(f"persisted RPCs, {IN_FLIGHT:,} in flight over {ENTITIES:,} entities, {SHARDS} shards")
    plait_figures: dict[int, Measured] = {}
    for count in counts:
        plait_figures[count] = figure = run(options.postgres, count, options.requests, options.port)
        base = plait_figures[min(plait_figures)].rps
        print(
            f"  {count} runner(s): {figure.rps:>9,.0f} RPCs/s"
            f"  ({figure.rps / base:.2f}x of {min(plait_figures)}; {_load()})"
        )
    if options.volatile:
        print(f"volatile RPCs, {IN_FLIGHT:,} in flight over {ENTITIES:,} entities")
        first: float | None = None
        for count in counts:
            figure = run(options.postgres, count, options.requests, options.port, volatile=True)
            first = figure.rps if first is None else first
            print(
                f"  {count} runner(s): {figure.rps:>9,.0f} RPCs/s"
                f"  ({figure.rps / first:.2f}x of {counts[0]}; {_load()})"
            )
    if not options.effect:
        return
    effect_figures: dict[int, Measured | str] = {}
    try:
        folder, versions = install_effect(options.peers_dir)
    except entity_peers.PeerUnavailable as err:
        print(f"Effect skipped: {err}")
        effect_figures = dict.fromkeys(counts, "skipped")
    else:
        print(f"Effect's cluster ({versions}), socket runners, SQL storage on PostgreSQL:")
        for count in counts:
            try:
                figure = run_effect(
                    folder, options.postgres, count, options.effect_requests, options.port + 10
                )
            except entity_peers.PeerUnavailable as err:
                print(f"  {count} runner(s): failed: {err}")
                effect_figures[count] = "failed"
                continue
            effect_figures[count] = figure
            print(
                f"  {count} runner(s): {figure.rps:>9,.0f} RPCs/s"
                f"  ({figure.requests:,} in {figure.seconds:.1f} s; {_load()})"
            )
    print()
    header = ("runners", "plait RPCs/s", "Effect RPCs/s", "ratio")
    rows = []
    for count in counts:
        ours, theirs = plait_figures[count], effect_figures.get(count)
        ratio = f"{ours.rps / theirs.rps:.1f}x" if isinstance(theirs, Measured) else "-"
        rows.append((str(count), _cell(ours), _cell(theirs), ratio))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
