"""Executions as operators see them: listings, counts by status, and timelines.

Executions are listed and searched a page at a time, counted by status, and one execution's
journal is read as a timeline.

The store keeps three statuses (running, suspended, complete) and opaque results; an operator
wants to know how a complete execution ended. The status of a listing is one of
`EXECUTION_STATUSES`: a complete execution is `succeeded`, `failed` (a declared error or a
defect) or `interrupted`, told apart by what its stored result starts with
(`plait.exits.OUTCOME_PREFIXES`), so that a search for failed executions is a store query, not a
scan in Python. Nothing here needs the workflows' types: results and values are shown as the
JSON they are stored as.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from plait.errors import InvalidArgumentError
from plait.exits import OUTCOME_PREFIXES
from plait.journal import Filter, History, Journal, Status
from plait.observability import tracing

__all__ = [
    "DEFAULT_COUNT_CAP",
    "EXECUTION_STATUSES",
    "ExecutionPage",
    "ExecutionStatusName",
    "ExecutionSummary",
    "ExecutionTimeline",
    "TimelineEvent",
    "count_executions",
    "list_executions",
    "timeline_of",
]

#: Where an execution stands, as listings name it.
ExecutionStatusName = Literal["running", "suspended", "succeeded", "failed", "interrupted"]
EXECUTION_STATUSES: tuple[ExecutionStatusName, ...] = get_args(ExecutionStatusName)
#: Counts stop here unless told otherwise: a count of the cap means "at least".
DEFAULT_COUNT_CAP = 10_000

# Each status as the store's status and what the result starts with (none: any).
_STORED: dict[ExecutionStatusName, tuple[Status, tuple[bytes, ...]]] = {
    "running": ("running", ()),
    "suspended": ("suspended", ()),
    "succeeded": ("complete", (OUTCOME_PREFIXES["Success"],)),
    "failed": ("complete", (OUTCOME_PREFIXES["Fail"], OUTCOME_PREFIXES["Die"])),
    "interrupted": ("complete", (OUTCOME_PREFIXES["Interrupt"],)),
}
_CURSOR = re.compile(r"^(\d{1,19})-(\d{1,19})$")


class _Record(BaseModel):
    # camelCase on the wire (as the proxy's other bodies), snake_case in Python.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, frozen=True
    )


class ExecutionSummary(_Record):
    """One execution in a listing."""

    execution_id: str = Field(description="The execution's id.")
    workflow: str = Field(description="The workflow's name.")
    status: ExecutionStatusName
    parent: str | None = Field(default=None, description="The execution that started it.")
    interrupt_requested: bool = Field(
        default=False, description="An interrupt was asked for and has not taken effect yet."
    )
    created_at: datetime = Field(description="When it was started (UTC).")
    updated_at: datetime = Field(description="When its status last changed (UTC).")
    error: dict[str, Any] | None = Field(
        default=None,
        description=(
            "How it failed (the stored cause: Fail with the declared error, Die, Interrupt), "
            "or the defect it suspended on."
        ),
    )


class ExecutionPage(_Record):
    """A page of a listing, newest first."""

    executions: list[ExecutionSummary]
    next: str | None = Field(
        default=None,
        description="Pass as `after` for the next page; null once nothing is left.",
    )


EventKind = Literal[
    "started", "activity", "deferred", "clock", "race", "timer", "suspended", "completed"
]


class TimelineEvent(_Record):
    """One record of an execution's journal, at the time it was stored."""

    kind: EventKind = Field(
        description=(
            "started; activity (a step's result, one per attempt); deferred, clock or race "
            "(a deferred's result: a clock's wake-up, a race's winner); timer (a durable "
            "clock still to fire, at its due time); suspended or completed (where it stands)."
        )
    )
    name: str = Field(description="The step's, deferred's or timer's name; the workflow's.")
    at: datetime | None = Field(
        description="When it was stored (a timer: when it fires); null if not known."
    )
    attempt: int | None = Field(default=None, description="An activity's attempt.")
    occurrence: int = Field(
        default=1, description="The how-manieth use of the name in the run (1 the first)."
    )
    outcome: Literal["success", "failure", "pending"] | None = None
    value: Any = Field(default=None, description="The stored value of a success.")
    error: dict[str, Any] | None = Field(default=None, description="The cause of a failure.")


class ExecutionTimeline(ExecutionSummary):
    """One execution, and its journal as a timeline."""

    payload: Any = Field(default=None, description="The payload, as stored (JSON).")
    result: Any = Field(default=None, description="The result of a success (JSON).")
    events: list[TimelineEvent] = Field(description="Its journal, in the order it was stored.")


# Building a filter ------------------------------------------------------------------------


def _ms(moment: datetime | None, name: str) -> int | None:
    """`moment` in ms since the Unix epoch; a naive datetime is taken as local time."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        msg = f"{name} must be a datetime, got {type(moment).__name__}"
        raise InvalidArgumentError(msg)
    millis = int(moment.timestamp() * 1000)
    return max(millis, 0)


def _filter(
    workflow: str | None,
    status: ExecutionStatusName | None,
    since: datetime | None,
    until: datetime | None,
) -> Filter:
    stored: Status | None = None
    prefixes: tuple[bytes, ...] = ()
    if status is not None:
        if status not in _STORED:
            msg = f"unknown status {status!r}: expected one of {', '.join(EXECUTION_STATUSES)}"
            raise InvalidArgumentError(msg)
        stored, prefixes = _STORED[status]
    return Filter(
        workflow=workflow,
        status=stored,
        result_prefixes=prefixes,
        created_from_ms=_ms(since, "since"),
        created_before_ms=_ms(until, "until"),
    )


def _parse_cursor(after: str | None) -> tuple[int, int] | None:
    if after is None:
        return None
    found = _CURSOR.match(after)
    if found is None or max(int(found[1]), int(found[2])) >= 2**64:
        msg = f"after={after!r} is not a listing's cursor (a page's `next`)"
        raise InvalidArgumentError(msg)
    return int(found[1]), int(found[2])


def _cursor(position: tuple[int, int] | None) -> str | None:
    return None if position is None else f"{position[0]}-{position[1]}"


# Reading what the store holds -------------------------------------------------------------


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {"_tag": "Undecodable", "bytes": len(data)}


def _status(stored: str, result: bytes | None) -> ExecutionStatusName:
    if stored != "complete":
        return cast("ExecutionStatusName", stored)
    if result is None or result.startswith(OUTCOME_PREFIXES["Success"]):
        return "succeeded"
    if result.startswith(OUTCOME_PREFIXES["Interrupt"]):
        return "interrupted"
    return "failed"


def _cause(stored: str, result: bytes | None) -> dict[str, Any] | None:
    """The cause of a failure, or the defect a suspended execution suspended on."""
    if result is None or result.startswith(OUTCOME_PREFIXES["Success"]):
        return None
    if stored == "running":
        return None
    decoded = _json(result)
    cause = decoded.get("cause") if isinstance(decoded, dict) else None
    return cause if isinstance(cause, dict) else None


async def list_executions(
    journal: Journal,
    *,
    workflow: str | None = None,
    status: ExecutionStatusName | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    after: str | None = None,
) -> ExecutionPage:
    """A page of the executions that pass the filter, newest first (see `Engine.executions`)."""
    if not 1 <= limit <= 1000:
        msg = f"limit must be from 1 to 1000, got {limit}"
        raise InvalidArgumentError(msg)
    page = await journal.list(_filter(workflow, status, since, until), _parse_cursor(after), limit)
    return ExecutionPage(
        executions=[
            ExecutionSummary(
                execution_id=e.id,
                workflow=e.workflow,
                status=_status(e.status, e.result),
                parent=e.parent,
                interrupt_requested=e.interrupted and e.status != "complete",
                created_at=_time(e.created_ms),
                updated_at=_time(e.updated_ms),
                error=_cause(e.status, e.result),
            )
            for e in page.executions
        ],
        next=_cursor(page.next),
    )


async def count_executions(
    journal: Journal,
    *,
    workflow: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cap: int = DEFAULT_COUNT_CAP,
) -> dict[ExecutionStatusName, int]:
    """How many executions pass the filter, by status, each counted up to `cap`."""
    if cap < 1:
        msg = f"cap must be at least 1, got {cap}"
        raise InvalidArgumentError(msg)
    return {
        status: await journal.count(_filter(workflow, status, since, until), cap)
        for status in EXECUTION_STATUSES
    }


async def count_suspended(journal: Journal, cap: int) -> int:
    """How many executions are suspended, counted up to `cap` (one query)."""
    return await journal.count(_filter(None, "suspended", None, None), cap)


def _step_name(key: str) -> tuple[str, int | None, int]:
    """A step key's name, attempt and occurrence: `Charge#2/1` is the 2nd use of Charge."""
    name, slash, attempt = key.rpartition("/")
    if not slash or not attempt.isdigit():
        return key, None, 1
    base, hash_, occurrence = name.rpartition("#")
    if hash_ and occurrence.isdigit():
        return base, int(attempt), int(occurrence)
    return name, int(attempt), 1


def _exit_fields(data: bytes) -> dict[str, Any]:
    decoded = _json(data)
    if isinstance(decoded, dict) and decoded.get("_tag") == "Success":
        return {"outcome": "success", "value": decoded.get("value")}
    cause = decoded.get("cause") if isinstance(decoded, dict) else None
    return {"outcome": "failure", "error": cause if isinstance(cause, dict) else decoded}


def _deferred_kind(name: str) -> tuple[EventKind, str]:
    if name.startswith("DurableClock/"):
        return "clock", name.removeprefix("DurableClock/")
    if name.startswith("raceAll/"):
        return "race", name.removeprefix("raceAll/")
    return "deferred", name


def timeline_of(history: History) -> ExecutionTimeline:
    """An execution's history as a timeline: what happened, in the order it was stored."""
    record = history.execution
    status = _status(record.status, record.result)
    created, updated = _time(history.created_ms), _time(history.updated_ms)
    journal: list[TimelineEvent] = []
    for step in history.steps:
        name, attempt, occurrence = _step_name(step.key)
        journal.append(
            TimelineEvent(
                kind="activity",
                name=name,
                attempt=attempt,
                occurrence=occurrence,
                at=None if step.at_ms is None else _time(step.at_ms),
                **_exit_fields(step.value),
            )
        )
    for deferred in history.deferreds:
        deferred_kind, name = _deferred_kind(deferred.name)
        base, hash_, count = name.rpartition("#")
        repeated = bool(hash_) and count.isdigit()
        journal.append(
            TimelineEvent(
                kind=deferred_kind,
                name=base if repeated else name,
                occurrence=int(count) if repeated else 1,
                at=None if deferred.at_ms is None else _time(deferred.at_ms),
                **_exit_fields(deferred.value),
            )
        )
    # Steps and deferreds stored before times were kept sort as if stored at the start.
    journal.sort(key=lambda event: event.at or created)
    events = [TimelineEvent(kind="started", name=record.workflow, at=created), *journal]
    events.extend(
        TimelineEvent(
            kind="timer",
            name=timer.name.removeprefix("DurableClock/"),
            at=_time(timer.due_ms),
            outcome="pending",
        )
        for timer in history.timers
    )
    if record.status != "running":
        end: dict[str, Any] = {}
        if record.status == "complete" and record.result is not None:
            end = _exit_fields(record.result)
        elif record.result is not None:
            end = {"error": _cause(record.status, record.result)}
        end_kind: EventKind = "completed" if record.status == "complete" else "suspended"
        # On PostgreSQL the journal's times are the database's clock, the status's the
        # engine's, taken just before the commit: the end may read a millisecond before the
        # last step of its own transaction. It is never shown before it.
        end_at = max([updated, *(e.at for e in journal if e.at is not None)])
        events.append(TimelineEvent(kind=end_kind, name=record.workflow, at=end_at, **end))
    success = _json(record.result) if status == "succeeded" else None
    return ExecutionTimeline(
        execution_id=history.id,
        workflow=record.workflow,
        status=status,
        parent=record.parent,
        interrupt_requested=record.interrupted and record.status != "complete",
        created_at=created,
        updated_at=updated,
        error=_cause(record.status, record.result),
        payload=_json(tracing.split_trace(record.payload)[0]),
        result=success.get("value") if isinstance(success, dict) else None,
        events=events,
    )
