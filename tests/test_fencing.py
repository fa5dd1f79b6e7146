"""One engine per PostgreSQL database, enforced by the database in every commit.

An engine holds a lease on the database that each of its commits is checked against. These tests
take it away with real faults on the real server: the session holding its lock is terminated
(as an operator or an idle-session timeout would), a second engine starts beside the first, and
the server restarts under a running engine. Side effects are counted, and every caller must get
the stored result: never a result made of step results the store did not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import plait
from tests import fencing_worker
from tests.conftest import psql

WORKFLOWS = 200
ROOT = Path(__file__).resolve().parent.parent


def query(url: str, sql: str) -> list[str]:
    database = url.rsplit("/", 1)[1]
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-F", "\x1f", "-qAtc", sql],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def terminate_lock_sessions(url: str) -> int:
    """Ends every session holding an advisory lock in the database; returns how many.

    Returns once they have ended (a terminated session lingers for a moment otherwise).
    """
    return len(
        query(
            url,
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def stored_outcomes(url: str) -> dict[int, tuple[str, list[str]]]:
    """Per workflow: its stored result and its stored step results, in step order."""
    rows = query(
        url,
        "SELECT convert_from(e.payload, 'UTF8')::json->>'i', convert_from(e.result, 'UTF8'), "
        "coalesce(string_agg(convert_from(j.value, 'UTF8'), E'\\t' ORDER BY j.seq), '') "
        "FROM plait_executions e LEFT JOIN plait_journal j ON j.execution_no = e.no "
        "WHERE e.workflow = 'FenceSteps' GROUP BY e.no, e.payload, e.result",
    )
    outcomes = {}
    for row in rows:
        i, result, steps = row.split("\x1f")
        outcomes[int(i)] = (
            json.loads(result)["value"],
            [json.loads(step)["value"] for step in steps.split("\t")],
        )
    return outcomes


def check_consistent(url: str, results: list[str], side_effects: Path, engines: int) -> None:
    """Every caller got the stored result, made of the stored steps; side effects counted."""
    stored = stored_outcomes(url)
    assert sorted(stored) == list(range(WORKFLOWS))
    for i, (result, steps) in stored.items():
        assert len(steps) == 3, f"workflow {i} stored steps {steps}"
        assert result == "|".join(steps), f"workflow {i}: {result} is not its stored steps"
    for line in results:
        caller, outcome = line.split(" ", 1)
        if outcome.startswith("!"):
            assert outcome == "!EngineFencedError", line
            continue
        assert outcome == stored[int(caller)][0], f"a caller of {caller} got {outcome}"
    runs = Counter(" ".join(line.split()[:2]) for line in lines(side_effects))
    for i in range(WORKFLOWS):
        for step in ("First", "Second", "Third"):
            assert 1 <= runs[f"{i} {step}"] <= engines, f"{i} {step} ran {runs[f'{i} {step}']}"


def start_worker(
    url: str, tag: str, side_effects: Path, results: Path, lease_ttl: float | None = None
) -> subprocess.Popen[str]:
    ttl = [] if lease_ttl is None else [str(lease_ttl)]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fencing_worker",
            url,
            tag,
            str(side_effects),
            str(results),
            str(WORKFLOWS),
            *ttl,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_second_engine_after_the_lock_session_ends_fences_the_first(
    postgres_url: str, tmp_path: Path
) -> None:
    side_effects, results_a, results_b = (
        tmp_path / "side_effects",
        tmp_path / "results_a",
        tmp_path / "results_b",
    )
    worker = start_worker(postgres_url, "A", side_effects, results_a)
    deadline = time.monotonic() + 60
    while len(lines(side_effects)) < WORKFLOWS // 2:
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "the first engine made no progress"
        await asyncio.sleep(0.005)
    # Take the database from the first engine: end its lock session and start a second one at
    # once, before the first takes its lock again (if it does first, try again).
    fencing_worker.TAG, fencing_worker.SIDE_EFFECTS = "B", str(side_effects)
    engine = plait.Engine.postgres(postgres_url)
    for _ in range(50):
        terminate_lock_sessions(postgres_url)
        try:
            await engine.__aenter__()
            break
        except plait.EngineLockedError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the second engine never got in")
    try:
        await asyncio.gather(*(fencing_worker.call(i, str(results_b)) for i in range(WORKFLOWS)))
    finally:
        await engine.__aexit__(None, None, None)
    # The first engine found out, said so, and stopped.
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "lost its lease" in err
    outcomes_a = lines(results_a)
    assert any(line.endswith("!EngineFencedError") for line in outcomes_a), outcomes_a
    assert all(not line.endswith("!EngineFencedError") for line in lines(results_b))
    check_consistent(postgres_url, outcomes_a + lines(results_b), side_effects, engines=2)
    reruns = len(lines(side_effects)) - 3 * WORKFLOWS
    print(f"{reruns} steps ran on both engines; none of their results reached a caller")


async def test_an_engine_paused_past_its_lease_is_fenced_when_it_wakes(
    postgres_url: str, tmp_path: Path
) -> None:
    side_effects, results_a, results_b = (
        tmp_path / "side_effects",
        tmp_path / "results_a",
        tmp_path / "results_b",
    )
    worker = start_worker(postgres_url, "A", side_effects, results_a, lease_ttl=2.0)
    deadline = time.monotonic() + 60
    while len(lines(side_effects)) < WORKFLOWS // 2:
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "the first engine made no progress"
        await asyncio.sleep(0.005)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        # Its lock session lives on, but its lease runs out: a second engine takes it then.
        fencing_worker.TAG, fencing_worker.SIDE_EFFECTS = "B", str(side_effects)
        engine = plait.Engine.postgres(postgres_url, lease_ttl=2.0)
        started = time.monotonic()
        while True:
            try:
                await engine.__aenter__()
                break
            except plait.EngineLockedError:
                assert time.monotonic() - started < 10, "the lease never ran out"
                await asyncio.sleep(0.1)
        assert time.monotonic() - started > 0.5, "taken before the lease ran out"
        try:
            await asyncio.gather(
                *(fencing_worker.call(i, str(results_b)) for i in range(WORKFLOWS))
            )
            os.kill(worker.pid, signal.SIGCONT)
            # Awake, the first engine cannot commit: it finds out, says so, and stops.
            _, err = await asyncio.to_thread(worker.communicate, timeout=60)
        finally:
            await engine.__aexit__(None, None, None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGCONT)
    assert worker.returncode == 0, err
    assert "lost its lease" in err
    check_consistent(postgres_url, lines(results_a) + lines(results_b), side_effects, engines=2)


async def run_all(url: str, tmp_path: Path, fault: Callable[[], None]) -> list[str]:
    """Runs the workflows on one engine in this process, with `fault()` once they are going."""
    side_effects, results = tmp_path / "side_effects", tmp_path / "results"
    fencing_worker.TAG, fencing_worker.SIDE_EFFECTS = "A", str(side_effects)
    async with plait.Engine.postgres(url):
        calls = asyncio.gather(*(fencing_worker.call(i, str(results)) for i in range(WORKFLOWS)))
        while len(lines(side_effects)) < WORKFLOWS // 2:  # noqa: ASYNC110 - a file, not an event
            await asyncio.sleep(0.005)
        await asyncio.to_thread(fault)
        await asyncio.wait_for(calls, 90)
    check_consistent(url, lines(results), side_effects, engines=1)
    return lines(results)


async def test_an_engine_whose_lock_session_ends_takes_it_again_and_goes_on(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plait")

    def fault() -> None:
        assert terminate_lock_sessions(postgres_url) == 1

    results = await run_all(postgres_url, tmp_path, fault)
    assert len(results) == WORKFLOWS
    assert not any("!" in line for line in results)
    assert any(r.name == "plait.store" and "ended" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


async def test_a_second_engine_beside_a_live_one_is_refused(postgres_url: str) -> None:
    async with plait.Engine.postgres(postgres_url):
        with pytest.raises(plait.EngineLockedError):
            await plait.Engine.postgres(postgres_url).start()


def server_restart() -> list[str] | None:
    """The command that restarts the local PostgreSQL server, if this machine has one."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]


async def test_an_engine_rides_out_a_server_restart(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restart = server_restart()
    if restart is None:
        pytest.skip("no local PostgreSQL cluster to restart")
    caplog.set_level(logging.WARNING, logger="plait")

    def fault() -> None:
        subprocess.run(restart, check=True, capture_output=True, timeout=60)

    results = await run_all(postgres_url, tmp_path, fault)
    assert len(results) == WORKFLOWS
    assert not any("!" in line for line in results)
    assert any("retried" in r.getMessage() for r in caplog.records), caplog.text
    # The server is back for the tests after this one.
    psql("SELECT 1")
