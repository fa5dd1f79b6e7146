"""The fields of plait's log records, for a JSON formatter or the host's log pipeline.

plait logs through `logging` (loggers `plait`, `plait.cluster`, `plait.http`) and puts what a
record is about in `extra`: `plait_execution_id`, `plait_workflow`, `plait_activity`,
`plait_attempt`, `plait_entity` (an entity's address `Type/id`), `plait_runner`, and
`trace_id` / `span_id` when a span is current. Payloads, results and errors' values are not
logged, only their types.
"""

from __future__ import annotations

from typing import Any

from plait.observability.tracing import span_ids

__all__ = ["fields"]


def fields(**about: Any) -> dict[str, Any]:
    """The `extra` of a record: `about`'s values prefixed `plait_`, with the trace ids.

    None values are left out.
    """
    extra = {f"plait_{key}": value for key, value in about.items() if value is not None}
    ids = span_ids()
    if ids is not None:
        extra["trace_id"], extra["span_id"] = ids
    return extra
