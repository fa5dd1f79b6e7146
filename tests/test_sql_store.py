"""`_native.SqlStore` itself, below the engine: the batched reads and timer ranges, and how they
refuse input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from plait import _bridge
from plait._native import MemoryStore, SqlStore
from plait.errors import InvalidArgumentError


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    opened: SqlStore = await _bridge.call(lambda bridge: SqlStore.open(bridge, url))
    yield opened
    await _bridge.call(opened.close)


async def call(method: Any, *args: Any) -> Any:
    return await _bridge.call(lambda bridge: method(bridge, *args))


async def test_batched_reads_answer_each_id_in_order(store: SqlStore) -> None:
    ops = [
        ("start", "b", "W", b"{}", None),
        ("start", "a", "W", b"[]", "b"),
        ("append", "a", "z/1", 0, b"1"),
        ("append", "b", "k/1", 0, b"2"),
        ("append", "a", "y/1", 1, b"3"),
        ("deferred", "a", "d", b"4"),
        ("status", "b", "complete", b"r"),
    ]
    await call(store.write, ops)
    ids = ["a", "missing", "b", "a", "nul\0"]
    snapshots = await call(store.snapshots, ids)
    assert snapshots == [await call(store.snapshot, id_) for id_ in ids]
    assert snapshots[0] == (
        ("W", b"[]", "b", "running", None, False),
        [("z/1", 0, b"1"), ("y/1", 1, b"3")],
        [("d", b"4")],
    )
    assert snapshots[1] is None
    assert snapshots[2][0] == ("W", b"{}", None, "complete", b"r", False)
    records = await call(store.executions, iter(ids))
    assert records == [s[0] if s else None for s in snapshots]
    assert await call(store.snapshots, []) == []
    assert await call(store.executions, ()) == []


async def test_batched_reads_refuse_what_is_not_a_batch_of_ids(store: SqlStore) -> None:
    bridge = _bridge.for_running_loop().native
    not_an_id: list[Any] = ["a", 2]
    for method in (store.snapshots, store.executions):
        with pytest.raises(TypeError, match="ids must be an iterable of str, not a single str"):
            method(bridge, "abc")
        with pytest.raises(TypeError, match=r"ids\[1\]"):
            method(bridge, not_an_id)
        with pytest.raises(InvalidArgumentError, match=r"ids\[0\]: .*lone surrogate"):
            method(bridge, ["\ud800"])


TIMERS = [("b", "t", 20), ("a", "t", 10), ("a", "u", 20), ("a", "v", 30), ("b", "zero", 0)]
# (after_ms, until_ms) -> (timers due in (after_ms, until_ms], earliest first; the next due after)
TIMER_RANGES: list[tuple[int, int, tuple[list[tuple[str, str, int]], int | None]]] = [
    (10, 20, ([("a", "u", 20), ("b", "t", 20)], 30)),
    (-1, 0, ([("b", "zero", 0)], 10)),
    (0, 10, ([("a", "t", 10)], 20)),
    (11, 19, ([], 20)),
    (30, 100, ([], None)),
    (29, 2**63 - 1, ([("a", "v", 30)], None)),
    (20, 10, ([], 20)),
]


async def test_timers_between_reads_a_range_of_due_instants(store: SqlStore) -> None:
    ops: list[Any] = [("start", "a", "W", b"{}", None), ("start", "b", "W", b"{}", None)]
    ops.extend(("timer", *timer) for timer in TIMERS)
    await call(store.write, ops)
    for after, until, expected in TIMER_RANGES:
        assert await call(store.timers_between, after, until) == expected, (after, until)
    await call(store.write, [("untimer", "a", "t"), ("status", "b", "complete", None)])
    assert await call(store.timers_between, -1, 25) == ([("a", "u", 20)], 30)
    bridge = _bridge.for_running_loop().native
    with pytest.raises(InvalidArgumentError, match="out of range"):
        store.timers_between(bridge, -1, 2**63)
    with pytest.raises(TypeError):
        store.timers_between(bridge, True, 5)


def test_memory_store_timers_between_answers_as_the_sql_store() -> None:
    memory = MemoryStore()
    memory.start("a", "W", b"{}")
    memory.start("b", "W", b"{}")
    for execution_id, name, due in TIMERS:
        assert memory.schedule_timer(execution_id, name, due)
    for after, until, expected in TIMER_RANGES:
        assert memory.timers_between(after, until) == expected, (after, until)
    assert memory.remove_timer("a", "t")
    memory.set_status("b", "complete")
    assert memory.timers_between(-1, 25) == ([("a", "u", 20)], 30)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        memory.timers_between(-(2**63) - 1, 5)
