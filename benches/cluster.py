"""Persisted entity RPCs over a cluster of 1, 2 and 3 runner processes on one PostgreSQL.

    .venv/bin/python -m benches.cluster [--requests N] [--runners 1,2,3] [--postgres ADMIN_URL]

Each run gets a fresh database. The runners (`benches/cluster_runner.py`, real processes) join,
the bench waits until the ring's shards are all held, then each runner sends its share of the
requests: persisted (saved before they run, a unique primary key each, the reply stored), to
entities spread over the shards, so most go to an entity on another runner (saved for its
owner, woken by NOTIFY; the reply comes back the same way). 1,000 requests are in flight over
the whole cluster. The figure is requests over the time from the first runner's start to the
last one's end. This machine has 2 cores: 3 runner processes share them, and the database too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benches import machine
from benches.compare_dbos import POSTGRES_ADMIN, postgres_missing, psql

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 300
IN_FLIGHT = 1_000
ENTITIES = 10_000


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


def run(admin_url: str, runners: int, requests: int) -> float:
    """Persisted RPCs/s over `runners` runner processes."""
    database = f"plait_bench_cluster_{uuid.uuid4().hex[:10]}"
    psql(admin_url, f"create database {database}")
    url = f"{admin_url.rsplit('/', 1)[0]}/{database}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="plait-bench-cluster-") as folder:
            out = Path(folder)
            ports = [4700 + i for i in range(runners)]
            for index, port in enumerate(ports):
                args = [url, port, out, index, runners, requests, IN_FLIGHT // runners, ENTITIES]
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
            return float(requests / elapsed)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        psql(admin_url, f"drop database if exists {database} with (force)")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runners", default="1,2,3")
    parser.add_argument(
        "--postgres", default=os.environ.get("PLAIT_BENCH_POSTGRES", POSTGRES_ADMIN)
    )
    options = parser.parse_args()
    missing = postgres_missing(options.postgres)
    if missing:
        print(f"skipped: {missing}")
        return
    print(f"{os.cpu_count()} CPUs; {machine.speed()}")
    print(f"persisted RPCs, {IN_FLIGHT:,} in flight over {ENTITIES:,} entities, {SHARDS} shards")
    figures: dict[int, float] = {}
    for count in (int(n) for n in options.runners.split(",")):
        figures[count] = run(options.postgres, count, options.requests)
        base = figures[min(figures)]
        print(
            f"  {count} runner(s): {figures[count]:>9,.0f} RPCs/s"
            f"  ({figures[count] / base:.2f}x of {min(figures)})"
        )


if __name__ == "__main__":
    main()
