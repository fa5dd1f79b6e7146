from __future__ import annotations

import random

import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random source seeded per test, so a failure replays exactly."""
    return random.Random(request.node.nodeid)
