"""Workflows on a cluster of real runner processes on the real PostgreSQL.

Each execution runs on the runner holding its shard (see `tests/workflow_cluster_worker.py`):
a client-only process starts them and completes their deferreds, runners are SIGKILLed and
SIGSTOPped, and every result must come once and right, steps may run again only where a kill
cut them, and no execution's steps ever run on two runners at once. Sized for a 2-core
machine: at most four processes at a time.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_cluster import Cluster
from tests.workflow_cluster_worker import expected

RUNNERS = (4901, 4902, 4903)
CLIENT = 0


@dataclass(frozen=True)
class Step:
    """One run of a step's body, as the worker recorded it."""

    n: int
    which: int
    port: int
    start: int
    end: int


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterable[Cluster]:
    made = Cluster(postgres_url, tmp_path, module="tests.workflow_cluster_worker")
    try:
        yield made
    finally:
        made.close()


def steps(cluster: Cluster) -> list[Step]:
    path = cluster.out / "effects"
    lines = path.read_text().splitlines() if path.exists() else []
    return [Step(*map(int, line.split())) for line in lines]


def stuck(cluster: Cluster, workflows: int) -> str:
    """What the store holds of the executions without a result (for a failure's message)."""
    from tests.workflow_cluster_worker import Order, OrderFlow

    found = results(cluster)
    ids = [OrderFlow.execution_id(Order(n=n)) for n in range(workflows) if n not in found][:20]
    if not ids:
        return "none"
    listed = ",".join(f"'{i}'" for i in ids)
    return subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            cluster.url.rsplit("/", 1)[1],
            "-Atc",
            "SELECT e.id, e.status, e.interrupted, e.updated_ms, "
            "(SELECT string_agg(d.name, ';') FROM plait_deferreds d WHERE d.execution_no = e.no), "
            "(SELECT string_agg(t.name, ';') FROM plait_timers t WHERE t.execution_id = e.id) "
            f"FROM plait_executions e WHERE e.id IN ({listed})",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def results(cluster: Cluster) -> dict[int, int]:
    path = cluster.out / "results"
    found: dict[int, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        n, value = map(int, line.split())
        assert n not in found, f"two results for execution {n}"
        found[n] = value
    return found


def check_steps(runs: list[Step], kills: dict[int, list[int]]) -> int:
    """Checks that a step ran again only after a kill cut it, and never on two runners at
    once; returns how many step runs were repeated."""
    by_step: dict[tuple[int, int], list[Step]] = defaultdict(list)
    by_execution: dict[int, list[Step]] = defaultdict(list)
    for run in runs:
        by_step[(run.n, run.which)].append(run)
        by_execution[run.n].append(run)
    repeated = 0
    for key, step_runs in by_step.items():
        step_runs.sort(key=lambda run: run.end)
        assert len(step_runs) <= 1 + sum(len(k) for k in kills.values()), key
        for earlier in step_runs[:-1]:
            # Run again: its first run's process was killed after the body and before the
            # result's commit.
            repeated += 1
            cut = [t for t in kills.get(earlier.port, []) if t >= earlier.end]
            assert cut, f"step {key} ran again though no kill cut it: {step_runs}"
    for n, execution_runs in by_execution.items():
        execution_runs.sort(key=lambda run: run.start)
        for before, after in itertools.pairwise(execution_runs):
            if before.port != after.port:
                assert before.end <= after.start, f"execution {n} ran on two runners at once"
    return repeated


def start_runners(cluster: Cluster, ports: Iterable[int]) -> None:
    ports = list(ports)
    for port in ports:
        cluster.start(port)
    cluster.wait("the runners hold every shard", lambda: cluster.settled(ports))


@pytest.mark.timeout(400)
def test_workflows_finish_once_across_runner_kills(cluster: Cluster) -> None:
    workflows = 1_000
    start_runners(cluster, RUNNERS)
    cluster.start(CLIENT, requests=workflows)
    (cluster.out / "go").write_text("go")
    kills: dict[int, list[int]] = defaultdict(list)
    for kill in range(2):
        # Kill the same runner twice while executions are in flight on it.
        target = workflows * (kill + 1) // 4
        cluster.wait(
            f"{target} results",
            lambda target=target: len(results(cluster)) >= target,  # type: ignore[misc]
            timeout=120,
        )
        cluster.kill(4902)
        kills[4902].append(time.time_ns())
        cluster.start(4902)
    try:
        cluster.wait("every result", lambda: (cluster.out / "done").exists(), timeout=180)
    except AssertionError as failed:
        raise AssertionError(f"{failed}; stuck: {stuck(cluster, workflows)}") from None
    found = results(cluster)
    assert found == {n: expected(n) for n in range(workflows)}
    runs = steps(cluster)
    assert {(run.n, run.which) for run in runs} == {
        (n, which) for n in range(workflows) for which in (1, 2, 3)
    }
    check_steps(runs, kills)
    # The runs were spread: every runner ran steps.
    assert {run.port for run in runs} == set(RUNNERS)


@pytest.mark.timeout(400)
def test_a_runner_paused_past_its_lease_commits_nothing_when_it_wakes(cluster: Cluster) -> None:
    workflows = 300
    cluster.env["CLUSTER_HEALTH_SECONDS"] = "60"
    cluster.env["WFC_STEP_SECONDS"] = "0.2"
    start_runners(cluster, RUNNERS[:2])
    cluster.start(CLIENT, requests=workflows)
    (cluster.out / "go").write_text("go")
    cluster.wait("some results", lambda: len(results(cluster)) >= workflows // 10, timeout=120)
    cluster.signal(4902, signal.SIGSTOP)
    paused = time.time_ns()
    # Past its lease (3 s): the other runner takes its shards over and runs its executions.
    cluster.wait(
        "the other runner holds every shard",
        lambda: (cluster.view(4901) or {}).get("shards") == 300,
        timeout=60,
    )
    time.sleep(1)
    cluster.signal(4902, signal.SIGCONT)
    resumed = time.time_ns()
    cluster.wait("every result", lambda: (cluster.out / "done").exists(), timeout=180)
    assert results(cluster) == {n: expected(n) for n in range(workflows)}
    runs = steps(cluster)
    # A step ran again only because the paused runner had run it: once elsewhere at most.
    # (The paused runner's own run may end after the new owner's: it finishes its step on
    # waking, and its commit is refused.)
    by_step: dict[tuple[int, int], list[Step]] = defaultdict(list)
    for run in runs:
        by_step[(run.n, run.which)].append(run)
    for key, step_runs in by_step.items():
        others = [run for run in step_runs if run.port != 4902]
        assert len(others) <= 1, f"step {key} ran again: {step_runs}"
        if len(step_runs) > 1:
            assert any(run.start < resumed for run in step_runs if run.port == 4902), key
    # What the paused runner ran to its end once awake was not kept: the database refused
    # its commit (or the runner stopped the run first, seeing its leases lost), and the
    # runner that took the shard over ran that step itself.
    late = [run for run in runs if run.port == 4902 and run.end > resumed]
    for run in late:
        assert any(other.port == 4901 for other in by_step[(run.n, run.which)]), run
    assert paused < resumed


def test_an_interrupt_from_a_client_reaches_the_execution_on_its_runner(
    cluster: Cluster,
) -> None:
    cluster.env["WFC_ACTION"] = "interrupt"
    start_runners(cluster, RUNNERS[:2])
    cluster.start(CLIENT)
    cluster.wait("the execution started", lambda: (cluster.out / "started").exists())
    # It waits for its approval (after its steps and sleep): suspended on its runner.
    cluster.wait("its three steps", lambda: len(steps(cluster)) >= 3, timeout=30)
    (cluster.out / "interrupt").write_text("now")
    cluster.wait("the caller's answer", lambda: (cluster.out / "done").exists(), timeout=60)
    assert (cluster.out / "done").read_text() == "Interrupted"
    # Listed from the client-only process: suspended before, interrupted after.
    execution_id = (cluster.out / "started").read_text()
    assert (cluster.out / "listed").read_text().split() == [execution_id]
    assert (cluster.out / "listed-after").read_text().split() == [execution_id]


def scenario_results(cluster: Cluster) -> dict[str, str]:
    path = cluster.out / "results"
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(line.split(" ", 1) for line in lines)


def test_children_races_and_interrupts_cross_runners(cluster: Cluster) -> None:
    cluster.env["WFC_ACTION"] = "scenarios"
    start_runners(cluster, RUNNERS[:2])
    cluster.start(CLIENT)
    cluster.wait("the scenarios", lambda: (cluster.out / "done").exists(), timeout=90)
    found = scenario_results(cluster)
    for n in range(20):
        # The child's step, then the parent's.
        assert found[f"parent-{n}"] == str((n * 10 + 1) + ((-n - 10_000) * 10 + 2)), n
    for n in range(10):
        assert found[f"race-{n}"] == str(-n), n  # the rejection, completed from the client
    assert found["interrupted-parent"] == "Interrupted"
    assert found["interrupted-child"] == "Failure"  # interrupted through its parent
    # Children ran on another runner than their parents: the ids spread over both.
    runs = steps(cluster)
    child_ports = {run.port for run in runs if run.which == 1 and 0 <= run.n < 20}
    parent_ports = {run.port for run in runs if run.which == 2 and run.n <= -10_000}
    assert child_ports == parent_ports == set(RUNNERS[:2])
    assert any(
        c.port != p.port
        for c in runs
        for p in runs
        if c.which == 1 and p.which == 2 and 0 <= c.n < 20 and p.n == -c.n - 10_000
    )


def test_a_suspended_execution_resumes_on_another_runner_with_its_timer(
    cluster: Cluster,
) -> None:
    # A long sleep on a stored timer: its runner leaves before it is due.
    cluster.env["WFC_SLEEP_SECONDS"] = "4"
    cluster.env["WFC_ACTION"] = "one"
    start_runners(cluster, [4901])
    cluster.start(CLIENT)
    cluster.wait("its first two steps", lambda: len(steps(cluster)) >= 2, timeout=30)
    assert {run.port for run in steps(cluster)} == {4901}
    cluster.start(4902)
    cluster.stop(4901)  # a graceful leave: 4902 takes every shard, the timer with it
    cluster.wait("its last step", lambda: len(steps(cluster)) >= 3, timeout=30)
    (cluster.out / "approve").write_text("now")
    cluster.wait("its result", lambda: (cluster.out / "done").exists(), timeout=30)
    assert results(cluster) == {0: expected(0)}
    assert [(run.which, run.port) for run in steps(cluster)] == [(1, 4901), (2, 4901), (3, 4902)]


def test_durable_queue_workers_spread_over_runners(cluster: Cluster) -> None:
    workflows = 200
    cluster.env["WFC_ACTION"] = "queue"
    start_runners(cluster, RUNNERS[:2])
    cluster.start(CLIENT, requests=workflows)
    cluster.wait("every result", lambda: (cluster.out / "done").exists(), timeout=90)
    # Each workflow got its item's result (n * 2) back from whichever runner's worker took it.
    assert results(cluster) == {n: n * 2 + 1 for n in range(workflows)}
    lines = (cluster.out / "jobs").read_text().splitlines()
    handled = [tuple(map(int, line.split())) for line in lines]
    assert sorted(n for n, _ in handled) == list(range(workflows)), "an item handled twice"
    assert {port for _, port in handled} == set(RUNNERS[:2]), "the workers of one runner only"
