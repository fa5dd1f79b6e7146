"""plait's types hold for users: mypy --strict infers what `tests/typecheck/accepted.py` asserts
and reports exactly the errors marked in `tests/typecheck/rejected.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ROOT / "tests" / "typecheck"
ACCEPTED = CHECKED / "accepted.py"
REJECTED = CHECKED / "rejected.py"
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
MARK = re.compile(r"# E: (?P<codes>[a-z-]+(?:, [a-z-]+)*)$")


def marked_errors(path: Path) -> set[tuple[int, str]]:
    """The `(line, code)` pairs a file's `# E: code, ...` marks expect."""
    expected = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        found = MARK.search(line)
        if found is not None:
            expected |= {(number, code) for code in found["codes"].split(", ")}
    return expected


@pytest.fixture(scope="module")
def reported() -> dict[str, set[tuple[int, str]]]:
    """mypy's errors on both files, as `(line, code)` pairs by file name."""
    stdout, stderr, _ = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--hide-error-context",
            "--no-pretty",
            "--no-error-summary",
            str(ACCEPTED),
            str(REJECTED),
        ]
    )
    assert not stderr, stderr
    errors: dict[str, set[tuple[int, str]]] = {ACCEPTED.name: set(), REJECTED.name: set()}
    for line in stdout.splitlines():
        if ": note: " in line:
            continue
        found = ERROR.match(line)
        assert found is not None, f"unexpected mypy output: {line}"
        errors[Path(found["path"]).name].add((int(found["line"]), found["code"]))
    return errors


@pytest.mark.timeout(600)
def test_inferred_types_hold(reported: dict[str, set[tuple[int, str]]]) -> None:
    assert reported[ACCEPTED.name] == set()


@pytest.mark.timeout(600)
def test_mistakes_are_type_errors(reported: dict[str, set[tuple[int, str]]]) -> None:
    expected = marked_errors(REJECTED)
    assert len(expected) >= 15
    assert reported[REJECTED.name] == expected
