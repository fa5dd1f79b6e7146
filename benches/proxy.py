"""Workflows through the HTTP proxy, beside the same workflows called in process, in one run.

    .venv/bin/python -m benches.proxy [--count 10000] [--in-flight 1000] [--rounds 3]
                                      [--backend sqlite|postgres ...] [--postgres ADMIN_URL]

The workflow of three steps (x+1, x*2, x-1: `CompareThreeSteps` of `benches/compare_dbos.py`),
`count` executions with `in_flight` of them at once (`asyncio.gather` over fresh inputs):

- in process: `execute` on an engine in this process (asyncio's default event loop);
- through the proxy: `plait serve benches.compare_dbos` in a child process (uvicorn, on uvloop
  when it is installed, as `plait serve` runs), called from here by a `plait.Client`, one
  connection per call in flight; every result is checked.

Each measurement runs on a fresh database, after 200 workflows of warm-up; the two alternate,
`rounds` times, and the table gives the median of each. Beside the rates, the CPU time spent
per workflow (all threads, user and system): in process, by this process; through the proxy,
by the server's process and by the client's. Client and server share the machine's cores,
which the engine alone has to itself: on a 2-core machine the client's work slows the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

import plait
from benches import machine
from benches.compare_dbos import POSTGRES_ADMIN, expected, plait_three_steps
from benches.databases import database, usable_backends
from plait.http import WorkflowClient

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200
_fresh = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measurement: its rate, and the CPU its processes spent per workflow (µs)."""

    rate: float
    cpu_here_us: float  # this process: the engine in process, or the client
    cpu_server_us: float = 0.0  # the proxy's process (through the proxy only)


@dataclasses.dataclass
class Outcome:
    """What was measured on one backend, one measurement of each kind per round."""

    backend: str
    count: int
    in_flight: int
    in_process: list[Measurement] = dataclasses.field(default_factory=list)
    through_proxy: list[Measurement] = dataclasses.field(default_factory=list)

    @staticmethod
    def _median(measurements: list[Measurement]) -> Measurement:
        return Measurement(
            statistics.median(m.rate for m in measurements),
            statistics.median(m.cpu_here_us for m in measurements),
            statistics.median(m.cpu_server_us for m in measurements),
        )

    @property
    def engine(self) -> Measurement:
        """The median measurement in process."""
        return self._median(self.in_process)

    @property
    def proxy(self) -> Measurement:
        """The median measurement through the proxy."""
        return self._median(self.through_proxy)

    @property
    def proxy_cost_us(self) -> float:
        """What the proxy adds to one workflow, in µs of the run's time (at this concurrency)."""
        return (1 / self.proxy.rate - 1 / self.engine.rate) * 1e6


async def _batches(call: WorkflowClient | plait.Engine, count: int, in_flight: int) -> float:
    """Runs `count` workflows, `in_flight` at a time; returns the elapsed seconds."""
    xs = [next(_fresh) for _ in range(count)]
    semaphore = asyncio.Semaphore(in_flight)

    async def one(x: int) -> int:
        async with semaphore:
            if isinstance(call, plait.Engine):
                return await plait_three_steps.execute({"x": x}, engine=call)
            return await call.execute(plait_three_steps, {"x": x})

    start = time.perf_counter()
    results = await asyncio.gather(*(one(x) for x in xs))
    elapsed = time.perf_counter() - start
    wrong = [(x, r) for x, r in zip(xs, results, strict=True) if r != expected("three", x)]
    if wrong:
        raise AssertionError(f"wrong results (x, result): {wrong[:5]}")
    return elapsed


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user and system, all threads) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(url: str, count: int, in_flight: int) -> Measurement:
    """Workflows on an engine in this process."""

    async def go() -> Measurement:
        async with plait.Engine.url(url) as engine:
            await _batches(engine, WARM_UP, in_flight)
            cpu = time.process_time()
            elapsed = await _batches(engine, count, in_flight)
            cpu = time.process_time() - cpu
            return Measurement(count / elapsed, cpu / count * 1e6)

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def served(url: str) -> Iterator[tuple[str, int]]:
    """`plait serve benches.compare_dbos` on `url`'s database, in a child process.

    Yields its base URL and its process id.
    """
    port = _free_port()
    command = [sys.executable, "-m", "plait.cli", "serve", "benches.compare_dbos"]
    command += ["--port", str(port), "--database", url, "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                msg = f"plait serve did not start (exit status {process.poll()})"
                raise RuntimeError(msg)
            time.sleep(0.05)
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def through_proxy(url: str, count: int, in_flight: int) -> Measurement:
    """Workflows through the proxy served on `url`'s database, called by `plait.Client`."""
    with served(url) as (base, pid):

        async def go() -> Measurement:
            async with plait.Client(base, max_connections=in_flight) as client:
                await _batches(client, WARM_UP, in_flight)
                cpu, server_cpu = time.process_time(), _cpu_seconds(pid)
                elapsed = await _batches(client, count, in_flight)
                cpu, server_cpu = time.process_time() - cpu, _cpu_seconds(pid) - server_cpu
                return Measurement(count / elapsed, cpu / count * 1e6, server_cpu / count * 1e6)

        return asyncio.run(go())


def run(
    backend: str,
    count: int,
    in_flight: int = 1_000,
    rounds: int = 3,
    admin_url: str = POSTGRES_ADMIN,
) -> Outcome:
    """Measures `backend`: `rounds` of each, alternating, each on a fresh database."""
    outcome = Outcome(backend, count, in_flight)
    for _ in range(rounds):
        with database(backend, admin_url) as url:
            outcome.in_process.append(in_process(url, count, in_flight))
        with database(backend, admin_url) as url:
            outcome.through_proxy.append(through_proxy(url, count, in_flight))
    return outcome


def report(outcomes: Sequence[Outcome]) -> str:
    """The table of outcomes, in Markdown: rates, then CPU per workflow."""
    lines = [
        "| backend | in process | through the proxy | proxy / in process "
        "| CPU per workflow in process | through the proxy: server + client |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        engine, proxy = o.engine, o.proxy
        lines.append(
            f"| {o.backend} | {engine.rate:,.0f} workflows/s | {proxy.rate:,.0f} workflows/s "
            f"| {proxy.rate / engine.rate:.2f} | {engine.cpu_here_us:,.0f} µs "
            f"| {proxy.cpu_server_us:,.0f} + {proxy.cpu_here_us:,.0f} µs |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measures every backend asked for and prints the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="workflows per measurement")
    parser.add_argument("--in-flight", type=int, default=1_000, help="workflows at once")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL of the server")
    args = parser.parse_args(argv)
    print(f"machine before: {machine.speed()}", flush=True)
    outcomes = []
    for backend in usable_backends(args.backend, args.postgres):
        outcome = run(backend, args.count, args.in_flight, args.rounds, args.postgres)
        print(
            f"{backend}: in process {[round(m.rate) for m in outcome.in_process]}, "
            f"through the proxy {[round(m.rate) for m in outcome.through_proxy]} workflows/s",
            flush=True,
        )
        outcomes.append(outcome)
    print(f"machine after:  {machine.speed()}")
    print(
        f"\nThe workflow of three steps, {args.count:,} per measurement, {args.in_flight:,} in "
        f"flight; median of {args.rounds} (plait {plait.__version__}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores):\n"
    )
    print(report(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
