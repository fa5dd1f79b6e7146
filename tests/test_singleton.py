"""Singletons on a single engine: they run while it runs, and names are unique."""

from __future__ import annotations

import asyncio

import pytest

import plait


async def test_a_singleton_runs_while_its_engine_runs() -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    singleton = plait.Singleton("test-single-engine", run)
    try:
        async with plait.Engine.memory():
            await asyncio.wait_for(started.wait(), 5)
            assert not stopped.is_set()
        assert stopped.is_set(), "closing the engine stops it"
    finally:
        singleton.unregister()


def test_singleton_names_are_unique() -> None:
    async def run() -> None:
        return None

    singleton = plait.Singleton("test-unique", run)
    try:
        with pytest.raises(plait.InvalidArgumentError, match="test-unique"):
            plait.Singleton("test-unique", run)
        with pytest.raises(plait.InvalidArgumentError):
            plait.Singleton("", run)
    finally:
        singleton.unregister()
    assert singleton.shard(300) == str(plait.sharding.shard_of("test-unique"))
