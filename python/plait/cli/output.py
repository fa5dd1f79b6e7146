"""What the `plait` command prints: tables and colours on a terminal, JSON with `--json`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from plait.engine import ExecutionPage, ExecutionTimeline, TimelineEvent
from plait.http.wire import ExecutionCounts, ExecutionStatus

__all__ = ["Output", "masked_url"]

_STATUS_STYLES = {
    "running": "yellow",
    "suspended": "cyan",
    "succeeded": "green",
    "failed": "red",
    "interrupted": "magenta",
}
_OUTCOME_STYLES = {"success": "green", "failure": "red", "pending": "cyan"}


def _when(moment: datetime | None) -> str:
    """A moment in local time, to the millisecond."""
    if moment is None:
        return "—"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def error_summary(error: dict[str, Any] | None) -> str:
    """A cause in a few words: the declared error's tag, the defect, or the cause's tag."""
    if not error:
        return ""
    tag = str(error.get("_tag", ""))
    inner = error.get("error")
    if tag == "Fail" and isinstance(inner, dict):
        return str(inner.get("_tag", "Fail"))
    defect = error.get("defect")
    if tag == "Die" and isinstance(defect, dict):
        return f"Die: {defect.get('name', '')}: {defect.get('message', '')}"
    return tag


def masked_url(url: str) -> str:
    """`url` with its password, if any, as `***`.

    Example:
        >>> masked_url("postgres://app:s3cret@db:5432/plait")
        'postgres://app:***@db:5432/plait'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class Output:
    """Prints a command's outcome for people (rich), or for scripts (`as_json`: one JSON line).

    Errors go to stderr for people; with `as_json` they are a JSON object on stdout, so a
    script reads one answer either way and tells them apart by the exit code.
    """

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def data(self, data: Any) -> None:
        """Prints `data` as one line of JSON (for `--json`)."""
        print(json.dumps(data, separators=(",", ":"), ensure_ascii=False), flush=True)

    def done(self, message: str, data: dict[str, Any]) -> None:
        """Says an action was done: `message` for people, `data` as JSON."""
        if self.as_json:
            self.data(data)
        else:
            self.out.print(Text("✓ ", style="green") + Text(message))

    def error(self, error: BaseException) -> None:
        """Reports the error the command failed with."""
        tag = type(error).__name__
        message = getattr(error, "message", None) or str(error)
        if self.as_json:
            self.data({"error": {"_tag": tag, "message": message}})
        else:
            self.err.print(Text("error: ", style="bold red") + Text(f"{tag}: {message}"))

    def executions(self, page: ExecutionPage, counts: ExecutionCounts | None) -> None:
        """Prints a page of executions: a table, with the status counts above it."""
        if self.as_json:
            self.data(page.model_dump(mode="json"))
            return
        if counts is not None:
            line = Text()
            for name in _STATUS_STYLES:
                count = getattr(counts, name)
                shown = f"{count}+" if count >= counts.cap else str(count)
                line += Text(f"{name} ", style=_STATUS_STYLES[name]) + Text(shown + "   ")
            self.out.print(line)
        table = Table(header_style="bold")
        for column in ("execution", "workflow", "status", "started", "updated", "error"):
            table.add_column(column, no_wrap=column != "error")
        for e in page.executions:
            table.add_row(
                e.execution_id,
                e.workflow,
                Text(e.status, style=_STATUS_STYLES[e.status]),
                _when(e.created_at),
                _when(e.updated_at),
                Text(error_summary(e.error), style="red"),
            )
        self.out.print(table)
        if not page.executions:
            self.out.print("no execution matches")
        if page.next is not None:
            self.out.print(f"more: --after {page.next}", markup=False, highlight=False)

    def timeline(self, timeline: ExecutionTimeline) -> None:
        """Prints an execution and its timeline."""
        if self.as_json:
            self.data(timeline.model_dump(mode="json"))
            return
        head = Table(show_header=False, box=None, pad_edge=False)
        head.add_column(style="bold")
        head.add_column()
        head.add_row("execution", timeline.execution_id)
        head.add_row("workflow", timeline.workflow)
        head.add_row("status", Text(timeline.status, style=_STATUS_STYLES[timeline.status]))
        head.add_row("started", _when(timeline.created_at))
        head.add_row("updated", _when(timeline.updated_at))
        if timeline.parent:
            head.add_row("parent", timeline.parent)
        head.add_row("payload", Text(_short(timeline.payload, 200)))
        if timeline.status == "succeeded":
            head.add_row("result", Text(_short(timeline.result, 200)))
        if timeline.error is not None:
            head.add_row("error", Text(_short(timeline.error, 200), style="red"))
        self.out.print(head)
        table = Table(header_style="bold", title="timeline", title_justify="left")
        for column in ("at", "event", "name", "attempt", "outcome", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        for event in timeline.events:
            table.add_row(
                _when(event.at),
                event.kind,
                event.name + (f" #{event.occurrence}" if event.occurrence > 1 else ""),
                "" if event.attempt is None else str(event.attempt),
                Text(event.outcome or "", style=_OUTCOME_STYLES.get(event.outcome or "", "")),
                _detail(event),
            )
        self.out.print(table)

    def bulk(self, done: str, ids: list[str], failed: dict[str, str]) -> None:
        """Reports a bulk action: how many it was done to, and which failed and why."""
        succeeded = [i for i in ids if i not in failed]
        if self.as_json:
            self.data({done: succeeded, "failed": failed})
            return
        self.out.print(Text("✓ ", style="green") + Text(f"{done} {len(succeeded)} of {len(ids)}"))
        for execution_id, why in failed.items():
            self.err.print(Text("✗ ", style="red") + Text(f"{execution_id}: {why}"))

    def status(self, status: ExecutionStatus) -> None:
        """Prints an execution's status."""
        if self.as_json:
            self.data(status.model_dump(mode="json"))
            return
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("execution", status.execution_id)
        table.add_row("workflow", status.workflow)
        table.add_row("status", Text(status.status, style=_STATUS_STYLES[status.status]))
        if status.status == "succeeded":
            table.add_row("result", Text(json.dumps(status.result, ensure_ascii=False)))
        if status.error is not None:
            table.add_row("error", Text(json.dumps(status.error, ensure_ascii=False)))
        self.out.print(table)


def _detail(event: TimelineEvent) -> Text:
    if event.error is not None:
        return Text(error_summary(event.error) or _short(event.error), style="red")
    if event.value is not None:
        return Text(_short(event.value))
    return Text("")
