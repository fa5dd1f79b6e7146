"""Through the HTTP proxy and in process: one batch of the three-step workflow each, with
pytest-benchmark, and a smoke test of `proxy.py`. The measurement itself:
`.venv/bin/python -m benches.proxy`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plait
from benches import proxy

BATCH = 200
IN_FLIGHT = 100


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.benchmark(group=f"3-step workflows, {BATCH} with {IN_FLIGHT} in flight, SQLite")
def test_through_the_proxy(benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    with proxy.served(f"sqlite://{tmp_path / 'plait.db'}") as (base, _pid):
        client = plait.Client(base)
        try:
            benchmark.pedantic(
                lambda: loop.run_until_complete(proxy._batches(client, BATCH, IN_FLIGHT)),
                rounds=5,
                warmup_rounds=1,
            )
        finally:
            loop.run_until_complete(client.aclose())
    if benchmark.stats is not None:
        benchmark.extra_info["workflows/s"] = round(BATCH / benchmark.stats.stats.mean)


@pytest.mark.benchmark(group=f"3-step workflows, {BATCH} with {IN_FLIGHT} in flight, SQLite")
def test_in_process(benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    engine = plait.Engine.sqlite(tmp_path / "plait.db")
    loop.run_until_complete(engine.start())
    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(proxy._batches(engine, BATCH, IN_FLIGHT)),
            rounds=5,
            warmup_rounds=1,
        )
    finally:
        loop.run_until_complete(engine.close())
    if benchmark.stats is not None:
        benchmark.extra_info["workflows/s"] = round(BATCH / benchmark.stats.stats.mean)


def test_proxy_smoke() -> None:
    outcome = proxy.run("sqlite", count=300, in_flight=IN_FLIGHT, rounds=1)
    assert len(outcome.in_process) == len(outcome.through_proxy) == 1
    assert outcome.engine.rate > 0
    assert outcome.proxy.rate > 0
    assert outcome.proxy.cpu_server_us > 0
    table = proxy.report([outcome])
    assert table.splitlines()[2].startswith("| sqlite | ")
