"""What the `plait` command prints: tables and colours on a terminal, JSON with `--json`."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from plait.http.wire import ExecutionStatus

__all__ = ["Output", "masked_url"]

_STATUS_STYLES = {
    "running": "yellow",
    "suspended": "cyan",
    "succeeded": "green",
    "failed": "red",
}


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
