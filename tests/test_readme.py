"""The README's examples do what the README says."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import plait
from plait.sharding import HashRing, shard_id
from plait.snowflake import SnowflakeGenerator
from tests.child import run_python

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_workflow_quick_start_runs(tmp_path: Path) -> None:
    done = run_python("-c", BLOCKS[0], cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "receipt for ch_o-1 sent to a@example.org",
        "ch_o-1",
        "ch_o-1",
        "declined: nothing to charge",
    ]


def test_entity_example_runs(tmp_path: Path) -> None:
    (example,) = [b for b in BLOCKS if "plait.Entity(" in b and "plait.Runner(" not in b]
    done = run_python("-c", example, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2", "2", "3"]
    # Again on the same file: the stored replies and state, nothing applied twice.
    again = run_python("-c", example, cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["2", "2", "3"]


def test_primitives_quick_start_runs() -> None:
    (example,) = [block for block in BLOCKS if "HashRing()" in block]
    done = run_python("-c", example)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1]"


(ERRORS,) = [block for block in BLOCKS if block.startswith("SnowflakeGenerator(machine_id")]
ERROR_LINES = [line for line in ERRORS.splitlines() if "#" in line]


@pytest.mark.parametrize("line", ERROR_LINES)
def test_bad_input_examples_raise_what_they_say(line: str) -> None:
    statement, comment = line.split("#", 1)
    error_name, message = comment.strip().split(": ", 1)
    error = getattr(plait, error_name)
    namespace: dict[str, object] = {
        "plait": plait,
        "ring": HashRing(),
        "shard_id": shard_id,
        "SnowflakeGenerator": SnowflakeGenerator,
    }
    with pytest.raises(error, match=re.escape(message.removesuffix("...").strip())):
        exec(statement, namespace)


def test_cluster_example_runs_on_two_runners(postgres_url: str, tmp_path: Path) -> None:
    (example,) = [block for block in BLOCKS if "plait.Runner(" in block and "Counter" in block]
    script = tmp_path / "counter.py"
    script.write_text(example)
    env = {**os.environ, "PLAIT_DATABASE_URL": postgres_url}
    # Two runners at once on one database, each adding 1 to the same three counters.
    runners = [
        subprocess.Popen(
            [sys.executable, str(script), str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in (4601, 4602)
    ]
    outputs = [runner.communicate(timeout=120) for runner in runners]
    for runner, (_, err) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, err
    seen = sorted(total for out, _ in outputs for total in ast.literal_eval(out.strip()))
    assert seen == [1, 1, 1, 2, 2, 2], outputs
    # A third run finds every counter at 2: each addition applied once.
    third = subprocess.run(
        [sys.executable, str(script), "4603"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() == "[3, 3, 3]"
