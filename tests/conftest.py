from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import plait
from plait.testing import VirtualClock
from tests.workflow_support import EngineFactory

# Type-checked by tests/test_typecheck.py, never imported: --doctest-modules would run them.
collect_ignore = ["typecheck"]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random source seeded per test, so a failure replays exactly."""
    return random.Random(request.node.nodeid)


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def psql(sql: str, database: str = "postgres") -> str:
    """Runs one statement on the local PostgreSQL server as its superuser; its output."""
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-qAtc", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, dropped afterwards."""
    name = f"plait_test_{uuid.uuid4().hex[:12]}"
    psql(f"create database {name}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        psql(f"drop database if exists {name} with (force)")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in a fresh directory (created on first open)."""
    return f"sqlite://{tmp_path / 'plait.db'}"


BACKENDS = ("memory", "sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The journal store a workflow test runs on: each test runs once per backend."""
    value: str = request.param
    return value


@pytest.fixture
def new_database_url(backend: str, tmp_path: Path) -> Iterator[Callable[[], str] | None]:
    """Makes fresh databases on the test's SQL backend (None for memory), dropped afterwards."""
    made: list[str] = []

    def new_url() -> str:
        made.append(f"plait_test_{uuid.uuid4().hex[:12]}")
        if backend == "sqlite":
            return f"sqlite://{tmp_path / made[-1]}.db"
        psql(f"create database {made[-1]}")
        return f"{POSTGRES}/{made[-1]}"

    yield None if backend == "memory" else new_url
    if backend == "postgres":
        for name in made:
            psql(f"drop database if exists {name} with (force)")


@pytest_asyncio.fixture
async def make_engine(
    backend: str, new_database_url: Callable[[], str] | None
) -> AsyncIterator[EngineFactory]:
    """Engines on the test's backend, each on a fresh database (see `EngineFactory`).

    Every engine it made is closed after the test.
    """
    factory = EngineFactory(backend, new_database_url)
    yield factory
    for engine in reversed(factory.engines):
        await engine.close()


@pytest_asyncio.fixture
async def plait_engine(
    make_engine: EngineFactory, plait_clock: VirtualClock
) -> AsyncIterator[plait.Engine]:
    """Overrides the plugin's memory engine: an engine on each backend, entered for the test."""
    async with make_engine(plait_clock) as engine:
        yield engine
