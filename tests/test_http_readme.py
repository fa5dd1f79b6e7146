"""The README's section on the ways in says what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from plait.cli import ExitCode
from plait.http.proxy import RESERVED_PATHS
from tests.child import run_python

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTION = README.split("## The ways in", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.DOTALL)


def test_the_recording_client_example_runs() -> None:
    (example,) = [block for block in BLOCKS if "RecordingClient()" in block]
    done = run_python("-c", example)
    assert done.returncode == 0, done.stderr


def test_the_exit_codes_are_the_commands() -> None:
    listed = re.search(r"Exit codes: (.*?invalid)\.", SECTION, re.DOTALL)
    assert listed is not None
    codes = [int(code) for code in re.findall(r"(\d) [a-z]", listed[1])]
    assert codes == [code.value for code in ExitCode]


def test_the_routes_listed_are_served_and_reserved() -> None:
    for route in ("/<name>/discard", "/<name>/resume", "/deferred/<token>", "/health"):
        assert route in SECTION
    assert {"health", "deferred", "openapi.json"} <= RESERVED_PATHS
    for route in ("/<entity>/<rpc>/<entity_id>", "/<entity>/<rpc>/<entity_id>/discard"):
        assert f"`POST {route}" in SECTION
    for route in ("/entities", "/cluster"):
        assert f"`GET {route}`" in SECTION
        assert route[1:] in RESERVED_PATHS
