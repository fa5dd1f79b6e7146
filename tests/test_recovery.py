"""What a durable engine finds when it starts: recovery, and refusing what it cannot use.

Each test runs on a real SQLite file and on the real PostgreSQL server. An engine "restart" is
a second engine opened on the same database after the first closed (the crash tests kill real
processes instead).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import plait
from plait.testing import VirtualClock
from tests.child import run_python


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(f"{request.param}_url")
    return value


async def settle(check: Any, within: float = 10.0) -> None:
    """Waits until `await check()` is truthy."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


runs: dict[str, int] = {}
Gate = plait.DurableDeferred("Gate", success=str)


@plait.workflow(name="RecoverNap", idempotency_key=lambda p: p.key)
async def nap(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    await plait.DurableClock.sleep("nap", timedelta(hours=1))
    return f"rested {key}"


@plait.workflow(name="RecoverGate", idempotency_key=lambda p: p.key)
async def gated(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    return str(await Gate)


async def test_durable_sleep_fires_after_a_restart(url: str) -> None:
    start = VirtualClock()
    async with plait.Engine.url(url, clock=start):
        execution_id = await nap.execute({"key": "a"}, discard=True)
        await settle(lambda: _is(nap, execution_id, plait.Suspended))
    # Two hours later (virtual), a new engine finds the timer due and fires it at once.
    later = VirtualClock(start=start.now_ms() + 2 * 3_600_000)
    async with plait.Engine.url(url, clock=later):
        assert await nap.execute({"key": "a"}) == "rested a"


async def test_a_future_timer_waits_in_the_wheel_after_a_restart(url: str) -> None:
    start = VirtualClock()
    async with plait.Engine.url(url, clock=start):
        execution_id = await nap.execute({"key": "b"}, discard=True)
        await settle(lambda: _is(nap, execution_id, plait.Suspended))
    clock = VirtualClock(start=start.now_ms() + 30 * 60_000)
    async with plait.Engine.url(url, clock=clock):
        waiting = asyncio.ensure_future(nap.execute({"key": "b"}))
        await clock.advance(timedelta(minutes=29))
        assert not waiting.done()
        await clock.advance(timedelta(minutes=2))
        assert await asyncio.wait_for(waiting, 10) == "rested b"


async def test_a_deferred_completed_while_no_engine_runs_it_resumes_on_start(
    url: str, tmp_path: Path
) -> None:
    async with plait.Engine.url(url):
        execution_id = await gated.execute({"key": "c"}, discard=True)
        await settle(lambda: _is(gated, execution_id, plait.Suspended))
    token = Gate.token_from_execution_id(gated, execution_id)
    # A webhook process completes the deferred; it runs no workflow (it does not define it).
    script = (
        "import asyncio, plait\n"
        f"async def main():\n"
        f"    async with plait.Engine.url({url!r}) as engine:\n"
        "        gate = plait.DurableDeferred('Gate', success=str)\n"
        f"        print(await gate.succeed({token!r}, 'opened'))\n"
        "asyncio.run(main())\n"
    )
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    async with plait.Engine.url(url):
        assert await gated.execute({"key": "c"}) == "opened"


async def test_running_executions_resume_and_finished_ones_do_not_rerun(url: str) -> None:
    async with plait.Engine.url(url):
        await gated.execute({"key": "d"}, discard=True)
        assert await nap.execute({"key": "e"}, discard=True)
        gate = Gate.token_from_payload(gated, {"key": "d"})
        await Gate.succeed(gate, "d-open")
        assert await gated.execute({"key": "d"}) == "d-open"
    before = dict(runs)
    async with plait.Engine.url(url):
        assert await gated.execute({"key": "d"}) == "d-open"
        assert runs == before


async def test_ten_thousand_suspended_executions_recover(url: str) -> None:
    count = 10_000
    start = VirtualClock()
    async with plait.Engine.url(url, clock=start):
        await asyncio.gather(
            *(nap.execute({"key": f"many-{i}"}, discard=True) for i in range(count))
        )
        last = nap.execution_id({"key": f"many-{count - 1}"})
        await settle(lambda: _is(nap, last, plait.Suspended), within=120)
    later = VirtualClock(start=start.now_ms() + 2 * 3_600_000)
    began = time.perf_counter()
    async with plait.Engine.url(url, clock=later):
        results = await asyncio.gather(*(nap.execute({"key": f"many-{i}"}) for i in range(count)))
    took = time.perf_counter() - began
    assert results == [f"rested many-{i}" for i in range(count)]
    print(f"{count} suspended executions resumed and completed in {took:.2f} s")


async def test_a_second_engine_on_the_same_database_is_refused(url: str) -> None:
    async with plait.Engine.url(url):
        with pytest.raises(plait.EngineLockedError, match="another plait engine"):
            async with plait.Engine.url(url):
                pass
    async with plait.Engine.url(url):  # released with the first
        pass


async def test_an_unreachable_database_fails_fast_with_the_password_masked() -> None:
    began = time.monotonic()
    with pytest.raises(plait.StoreConnectError) as caught:
        async with plait.Engine.postgres("postgresql://plait:hunter2@127.0.0.1:1/nowhere"):
            pass
    assert time.monotonic() - began < 10
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


async def test_a_missing_database_names_it(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/plait_no_such_database"
    with pytest.raises(plait.StoreConnectError, match="plait_no_such_database"):
        async with plait.Engine.postgres(missing):
            pass


class Before(BaseModel):
    key: str
    count: int


class After(BaseModel):
    key: str
    count: list[int]


def test_a_corrupted_journal_row_fails_only_its_execution(tmp_path: Path) -> None:
    path = tmp_path / "plait.db"
    url = f"sqlite://{path}"

    async def first() -> tuple[str, str]:
        async with plait.Engine.url(url):
            bad = await gated.execute({"key": "bad"}, discard=True)
            good = await gated.execute({"key": "good"}, discard=True)
            await settle(lambda: _is(gated, good, plait.Suspended))
            await settle(lambda: _is(gated, bad, plait.Suspended))
            return bad, good

    bad, good = asyncio.run(first())
    with sqlite3.connect(path) as db:
        db.execute(
            "insert into plait_deferreds (execution_no, name, value) "
            "select no, 'Gate', ? from plait_executions where id = ?",
            (b"\x00not json", bad),
        )
        db.execute("update plait_executions set status = 'running' where id = ?", (bad,))

    async def second() -> None:
        async with plait.Engine.url(url):
            with pytest.raises(plait.JournalDecodeError, match=bad):
                await gated.execute({"key": "bad"})
            await Gate.succeed(Gate.token_from_execution_id(gated, good), "fine")
            assert await gated.execute({"key": "good"}) == "fine"

    asyncio.run(second())


def test_an_incompatible_payload_change_names_the_workflow_and_the_field(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'plait.db'}"

    async def first() -> str:
        # The first process's code: gone with it, so the new code can take the name.
        old = plait.Workflow(
            "Evolving", payload=Before, success=str, idempotency_key=lambda p: p.key
        )

        @old.implement
        async def old_body(payload: Before, execution_id: str) -> str:
            return str(await Gate)

        async with plait.Engine.url(url):
            execution_id = await old.execute(Before(key="k", count=1), discard=True)
            await settle(lambda: _is(old, execution_id, plait.Suspended))
            return execution_id

    execution_id = asyncio.run(first())
    new = plait.Workflow("Evolving", payload=After, success=str, idempotency_key=lambda p: p.key)

    @new.implement
    async def new_body(payload: After, execution_id: str) -> str:
        return str(await Gate)

    async def second() -> None:
        async with plait.Engine.url(url):
            await Gate.succeed(Gate.token_from_execution_id(new, execution_id), "x")
            with pytest.raises(plait.JournalDecodeError) as caught:
                await new.execute(After(key="k", count=[1]))
            message = str(caught.value)
            assert "Evolving" in message
            assert "count" in message

    asyncio.run(second())


async def test_postgres_restart_mid_run_delays_but_loses_nothing(postgres_url: str) -> None:
    count = 200

    async with plait.Engine.postgres(postgres_url):
        pending = asyncio.gather(*(nap_short.execute({"key": f"r{i}"}) for i in range(count)))
        await asyncio.sleep(0.3)
        restart = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart",
        )
        assert await restart.wait() == 0
        results = await asyncio.wait_for(pending, 120)
    assert results == [f"r{i}!" for i in range(count)]
    # Each step ran once per execution: nothing duplicated by the reconnects.
    assert all(short_runs[f"r{i}"] == 1 for i in range(count))


short_runs: dict[str, int] = {}


@plait.activity(name="Mark")
async def mark(key: str) -> str:
    short_runs[key] = short_runs.get(key, 0) + 1
    await asyncio.sleep(0.5)
    return key + "!"


@plait.workflow(name="RecoverShort", idempotency_key=lambda p: p.key)
async def nap_short(key: str) -> str:
    return await mark(key)


async def _is(workflow: plait.Workflow[Any, Any], execution_id: str, kind: type) -> bool:
    return isinstance(await workflow.poll(execution_id), kind)
