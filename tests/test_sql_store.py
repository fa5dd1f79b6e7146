"""`_native.Store` itself, below the engine: the batched reads and timer ranges, and how they
refuse input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import plait
from plait import _bridge
from plait._native import Execution, Op, Snapshot, Store, Timer
from plait.errors import InvalidArgumentError


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    opened: Store = await _bridge.call(lambda bridge: Store.open(bridge, url))
    yield opened
    await _bridge.call(opened.close)


async def call(method: Any, *args: Any) -> Any:
    return await _bridge.call(lambda bridge: method(bridge, *args))


def record_fields(record: Execution) -> tuple[Any, ...]:
    return (
        record.workflow,
        record.payload,
        record.parent,
        record.status,
        record.result,
        record.interrupted,
    )


def snapshot_fields(snapshot: Snapshot) -> tuple[Any, ...]:
    return (
        record_fields(snapshot.execution),
        [(entry.key, entry.seq, entry.value) for entry in snapshot.entries],
        [(deferred.name, deferred.value) for deferred in snapshot.deferreds],
    )


async def test_batched_reads_answer_each_id_in_order(store: Store) -> None:
    ops = [
        Op.start("b", "W", b"{}", None),
        Op.start("a", "W", b"[]", "b"),
        Op.append("a", "z/1", 0, b"1"),
        Op.append("b", "k/1", 0, b"2"),
        Op.append("a", "y/1", 1, b"3"),
        Op.deferred("a", "d", b"4"),
        Op.status("b", "complete", b"r"),
    ]
    await call(store.write, ops)
    ids = ["a", "missing", "b", "a", "nul\0"]
    snapshots = await call(store.snapshots, ids)
    assert snapshots == [(await call(store.snapshots, [id_]))[0] for id_ in ids]
    assert snapshot_fields(snapshots[0]) == (
        ("W", b"[]", "b", "running", None, False),
        [("z/1", 0, b"1"), ("y/1", 1, b"3")],
        [("d", b"4")],
    )
    assert snapshots[1] is None
    assert record_fields(snapshots[2].execution) == ("W", b"{}", None, "complete", b"r", False)
    records = await call(store.executions, iter(ids))
    assert records == [s.execution if s else None for s in snapshots]
    assert await call(store.snapshots, []) == []
    assert await call(store.executions, ()) == []


async def test_batched_reads_refuse_what_is_not_a_batch_of_ids(store: Store) -> None:
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


def timer_fields(
    answer: tuple[list[Timer], int | None],
) -> tuple[list[tuple[str, str, int]], int | None]:
    timers, following = answer
    return [(t.execution_id, t.name, t.due_ms) for t in timers], following


async def test_timers_between_reads_a_range_of_due_instants(store: Store) -> None:
    ops = [Op.start("a", "W", b"{}", None), Op.start("b", "W", b"{}", None)]
    ops.extend(Op.timer(*timer) for timer in TIMERS)
    await call(store.write, ops)
    for after, until, expected in TIMER_RANGES:
        answer = timer_fields(await call(store.timers_between, after, until))
        assert answer == expected, (after, until)
    await call(store.write, [Op.untimer("a", "t"), Op.status("b", "complete", None)])
    assert timer_fields(await call(store.timers_between, -1, 25)) == ([("a", "u", 20)], 30)
    bridge = _bridge.for_running_loop().native
    with pytest.raises(InvalidArgumentError, match="out of range"):
        store.timers_between(bridge, -1, 2**63)
    with pytest.raises(TypeError):
        store.timers_between(bridge, True, 5)


def test_memory_store_timers_between_answers_as_the_sql_store() -> None:
    memory = Store.memory()
    assert memory.write_now([Op.start("a", "W", b"{}"), Op.start("b", "W", b"{}")]) == [None, None]
    assert memory.write_now([Op.timer(*timer) for timer in TIMERS]) == [True] * len(TIMERS)
    for after, until, expected in TIMER_RANGES:
        assert timer_fields(memory.timers_between_now(after, until)) == expected, (after, until)
    assert memory.write_now([Op.untimer("a", "t"), Op.status("b", "complete")]) == [True, True]
    assert timer_fields(memory.timers_between_now(-1, 25)) == ([("a", "u", 20)], 30)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        memory.timers_between_now(-(2**63) - 1, 5)


def test_ops_are_made_by_typed_constructors_and_records_read_by_attribute() -> None:
    memory = Store.memory()
    assert memory.immediate
    assert memory.url is None
    start = Op.start("e", "W", b"{}", "p")
    assert (start.kind, start.execution_id) == ("start", "e")
    assert start == Op.start("e", "W", b"{}", "p")
    assert start != Op.start("e", "W", b"{}")
    assert repr(Op.timer("e", "t", 5)) == '<Op timer "e">'
    assert memory.write_now([start]) == [None]
    [existing] = memory.write_now((Op.start("e", "Other", b"[]"),))
    assert isinstance(existing, Execution)
    assert record_fields(existing) == ("W", b"{}", "p", "running", None, False)
    ops = [
        Op.append("e", "k/1", 0, b"1"),
        Op.append("e", "k/1", 1, b"late"),
        Op.deferred("e", "d", b"2"),
        Op.deferred("missing", "d", b"2"),
        Op.interrupt("e"),
        Op.interrupt("missing"),
        Op.timer("e", "t", 5),
        Op.untimer("e", "t"),
        Op.status("e", "suspended", b"cause"),
    ]
    assert memory.write_now(ops) == [True, False, True, None, True, None, True, True, True]
    [snapshot] = memory.snapshots_now(["e"])
    assert snapshot is not None
    assert snapshot_fields(snapshot) == (
        ("W", b"{}", "p", "suspended", b"cause", True),
        [("k/1", 0, b"1")],
        [("d", b"2")],
    )
    assert memory.executions_now(["e", "missing"]) == [snapshot.execution, None]
    assert memory.with_status_now("suspended") == ["e"]


def test_an_op_no_store_could_keep_is_refused_alone() -> None:
    memory = Store.memory()
    results = memory.write_now(
        [Op.start("e", "W", b"{}"), Op.deferred("e", "bad\0name", b"1"), Op.timer("e", "t", 2**63)]
    )
    assert results[0] is None
    assert isinstance(results[1], InvalidArgumentError)
    assert str(results[1]) == 'ops[1]: name "bad\\0name" holds a NUL character'
    assert isinstance(results[2], InvalidArgumentError)
    assert str(results[2]).startswith("ops[2]: due_ms")
    [snapshot] = memory.snapshots_now(["e"])
    assert snapshot is not None
    assert snapshot.deferreds == []


def test_ops_refuse_what_is_not_theirs() -> None:
    memory = Store.memory()
    with pytest.raises(InvalidArgumentError, match='unknown execution status "done"'):
        Op.status("e", "done")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="out of range"):
        Op.append("e", "k/1", 2**32, b"")
    with pytest.raises(TypeError):
        Op.append("e", "k/1", True, b"")
    with pytest.raises(InvalidArgumentError, match="lone surrogate"):
        Op.interrupt("\ud800")
    not_an_op: list[Any] = [Op.interrupt("e"), ("interrupt", "e")]
    with pytest.raises(TypeError, match=r"ops\[1\]: expected an Op, got tuple"):
        memory.write_now(not_an_op)
    with pytest.raises(TypeError, match="not a single str"):
        memory.write_now("start")  # type: ignore[arg-type]


async def test_a_sql_store_answers_later_and_refuses_ops_alone(store: Store) -> None:
    assert not store.immediate
    assert store.url is not None
    assert repr(store).startswith(f"<Store {store.url} prefix=")
    with pytest.raises(plait.StoreError, match="answers later"):
        store.write_now([Op.start("e", "W", b"{}")])
    with pytest.raises(plait.StoreError, match="answers later"):
        store.snapshots_now(["e"])
    results = await call(
        store.write, [Op.start("e", "W", b"{}"), Op.start("nul\0", "W", b"{}"), Op.interrupt("e")]
    )
    assert results[0] is None
    assert isinstance(results[1], InvalidArgumentError)
    assert results[2] is True
    assert await call(store.executions, ["e", "nul\0"]) == [
        (await call(store.snapshots, ["e"]))[0].execution,
        None,
    ]
