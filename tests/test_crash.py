"""Workflows survive SIGKILL: a worker process is killed at random instants and restarted.

After the kills, one more worker runs to the end. Then every workflow has the right result,
callers never saw two different results, and each step's side effect happened at least once
and at most once more per kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

WORKFLOWS = 200
KILLS = 5
ROOT = Path(__file__).resolve().parent.parent


def start_worker(url: str, side_effects: Path, results: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash_worker",
            url,
            str(side_effects),
            str(results),
            str(WORKFLOWS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workflows_survive_sigkill_at_random_instants(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    side_effects, results = tmp_path / "side_effects", tmp_path / "results"
    rng = random.Random(request.node.nodeid)
    kills = 0
    for _ in range(KILLS):
        # Kill each worker in the middle of its work: after a random number of new steps.
        target = len(lines(side_effects)) + rng.randint(1, 3 * WORKFLOWS // (KILLS + 1))
        worker = start_worker(url, side_effects, results)
        deadline = time.monotonic() + 60
        while worker.poll() is None and len(lines(side_effects)) < target:
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.002)
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            kills += 1
        worker.communicate(timeout=30)
    assert kills >= 3, "the workers finished before they could be killed; raise WORKFLOWS"
    final = start_worker(url, side_effects, results)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert "done" in out

    produced: dict[int, set[int]] = {}
    for line in lines(results):
        i, value = map(int, line.split())
        produced.setdefault(i, set()).add(value)
    assert sorted(produced) == list(range(WORKFLOWS)), "a workflow never completed"
    for i, values in produced.items():
        assert values == {(i + 1) * 2 - 1}, f"workflow {i} produced {values}"

    runs = Counter(lines(side_effects))
    for i in range(WORKFLOWS):
        for step in ("AddOne", "Double", "SubtractOne"):
            count = runs[f"{i} {step}"]
            assert 1 <= count <= 1 + kills, f"{i} {step} ran {count} times with {kills} kills"
    reruns = sum(runs.values()) - 3 * WORKFLOWS
    print(f"{backend}: {kills} kills, {reruns} steps re-ran")

    # Done means done: one more worker returns the stored results and runs no step.
    before = len(lines(side_effects))
    again = start_worker(url, side_effects, results)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert len(lines(side_effects)) == before
