"""Helpers for the workflow engine tests: letting the engine run, waiting for a result, reading
what an engine stored (through its journal, so on every backend).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import plait
import plait.engine.work
from plait import _bridge
from plait.clocks import Clock
from plait.journal import Execution, Journal, Status

R = TypeVar("R", plait.Complete[Any], plait.Suspended)

STATUSES: tuple[Status, ...] = ("running", "suspended", "complete")


class EngineFactory:
    """Makes engines on one backend (the `make_engine` fixture): each on a fresh database.

    `reopen(engine)` gives another engine on the same database, as after a restart. The
    fixture closes every engine made after the test.

    Args:
        backend: "memory", "sqlite" or "postgres".
        new_url: For SQL backends, makes a fresh, empty database and returns its URL.
    """

    def __init__(self, backend: str, new_url: Callable[[], str] | None) -> None:
        self.backend = backend
        self._new_url = new_url
        self._urls: dict[int, str] = {}  # id(engine) -> the URL of its database
        self.engines: list[plait.Engine] = []

    def __call__(self, clock: Clock | None = None) -> plait.Engine:
        """A new engine (not started) on a fresh, empty database."""
        if self._new_url is None:
            return self._made(plait.Engine.memory(clock=clock), None)
        url = self._new_url()
        return self._made(plait.Engine.url(url, clock=clock), url)

    def reopen(self, engine: plait.Engine, clock: Clock | None = None) -> plait.Engine:
        """A new engine (not started) on `engine`'s database.

        On SQLite and PostgreSQL `engine` must be closed first: a database takes one engine
        at a time (a second is refused with `EngineLockedError`).
        """
        url = self._urls.get(id(engine))
        if url is None:
            assert engine.store is not None
            assert engine.store.immediate
            return self._made(plait.Engine(engine.store, clock=clock), None)
        return self._made(plait.Engine.url(url, clock=clock), url)

    def _made(self, engine: plait.Engine, url: str | None) -> plait.Engine:
        self.engines.append(engine)
        if url is not None:
            self._urls[id(engine)] = url
        return engine


async def spin(rounds: int) -> None:
    """Lets ready callbacks and tasks run for exactly `rounds` loop iterations."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def _store_calls_in_flight() -> int:
    """How many store reads and commits (SQLite, PostgreSQL) the running loop awaits.

    Reads the loop bridge's private table of awaited Rust tasks: every store call goes there.
    """
    loop = asyncio.get_running_loop()
    bridge = _bridge._bridges.get(id(loop))
    if bridge is None or bridge._loop() is not loop:
        return 0
    return len(bridge._futures) + len(bridge._callbacks)


async def settle(rounds: int = 50, *, within: float = 10.0) -> None:
    """Lets the engine go on until it has nothing left to do but wait.

    Returns after `rounds` loop iterations in a row with no store read or commit in flight
    (SQLite, PostgreSQL) and nothing in an engine's work source (a timer firing, a snapshot
    being read, work not yet taken): what the engine does without the clock moving, a deferred
    completing or a worker thread finishing has happened.
    """
    deadline = time.monotonic() + within
    idle = 0
    while idle < rounds:
        if _store_calls_in_flight() or plait.engine.work.busy():
            idle = 0
            if time.monotonic() > deadline:
                msg = f"the engine still awaits its store after {within} s"
                raise AssertionError(msg)
            await asyncio.sleep(0.0005)
        else:
            idle += 1
            await asyncio.sleep(0)


async def poll_until(
    workflow: plait.Workflow[Any, Any],
    execution_id: str,
    kind: type[R],
    *,
    engine: plait.Engine | None = None,
    within: float = 10.0,
) -> R:
    """Polls the execution until its result is a `kind`; fails the test if it never is.

    Polls every loop iteration at first, then every millisecond (for worker threads and
    store commits).
    """
    result = None
    deadline = time.monotonic() + within
    rounds = 0
    while time.monotonic() < deadline:
        result = await workflow.poll(execution_id, engine=engine)
        if isinstance(result, kind):
            return result
        rounds += 1
        await asyncio.sleep(0 if rounds < 200 else 0.001)
    msg = f"{workflow.name} {execution_id}: never {kind.__name__}, last poll gave {result!r}"
    raise AssertionError(msg)


def journal_of(engine: plait.Engine) -> Journal:
    """The started engine's journal."""
    assert engine.journal is not None, "the engine is not started"
    return engine.journal


async def record(engine: plait.Engine, execution_id: str) -> Execution | None:
    """The stored record of the execution (`.workflow`, `.payload`, `.parent`, `.status`, ...)."""
    return await journal_of(engine).execution(execution_id)


async def stored_count(engine: plait.Engine) -> int:
    """How many executions the engine's store holds, whatever their status."""
    journal = journal_of(engine)
    return sum([len(await journal.with_status(status)) for status in STATUSES])


async def timers(engine: plait.Engine) -> list[tuple[str, str, int]]:
    """Every stored timer as (execution_id, name, due_ms), earliest first."""
    return [(t.execution_id, t.name, t.due_ms) for t in await journal_of(engine).timers()]


async def journal_keys(engine: plait.Engine, execution_id: str) -> list[str]:
    """The step keys stored for the execution, in call order."""
    snapshot = await journal_of(engine).snapshot(execution_id)
    assert snapshot is not None
    return [entry.key for entry in sorted(snapshot.entries, key=lambda entry: entry.seq)]


async def deferred_names(engine: plait.Engine, execution_id: str) -> set[str]:
    """The names of the deferreds with a stored result in the execution."""
    snapshot = await journal_of(engine).snapshot(execution_id)
    assert snapshot is not None
    return {deferred.name for deferred in snapshot.deferreds}
