"""The examples in `_native.pyi` docstrings run against the compiled module."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest

import plait
from plait import _native

STUB = Path(plait.__file__).with_name("_native.pyi")


def _docstrings() -> list[tuple[str, str]]:
    tree = ast.parse(STUB.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc and ">>>" in doc:
                found.append((node.name, doc))
    return found


def test_the_stub_has_examples() -> None:
    assert len(_docstrings()) >= 4


@pytest.mark.parametrize(("name", "doc"), _docstrings(), ids=[n for n, _ in _docstrings()])
def test_stub_example(name: str, doc: str) -> None:
    test = doctest.DocTestParser().get_doctest(doc, dict(vars(_native)), name, str(STUB), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
