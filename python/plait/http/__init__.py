"""plait over HTTP: the proxy (an ASGI app), its typed client, and a recording client for tests.

Needs the `http` extra (`pip install 'plait[http]'`): FastAPI and uvicorn for the proxy, httpx
for the client. Names load on first use, so the client does not import the server's libraries.

- `proxy_app(workflows, engine=..., entities=...)`: the proxy, Effect's `WorkflowProxy` and
  `EntityProxy` routes and plait's; `serve(app)` runs it on uvicorn (`plait serve` does both).
- `Client(url)`: calls the same `Workflow` and `Rpc` objects over HTTP, typed by them.
- `RecordingClient()`: records the calls, answers what a test sets.
- `WorkflowClient`: what both clients do, for code that takes either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.http.client import Client
    from plait.http.errors import (
        ForbiddenError,
        InvalidRequestError,
        MalformedRequestError,
        NotFoundError,
        ProxyError,
        ProxyUnavailableError,
        RequestTooLargeError,
        ResultNotSetError,
        TokenRequiredError,
        UnauthorizedError,
        UnexpectedResponseError,
        UnsupportedMediaTypeError,
    )
    from plait.http.proxy import proxy_app
    from plait.http.recording import RecordedCall, RecordingClient
    from plait.http.server import proxy_server, serve
    from plait.http.workflow_client import WorkflowClient

# Each public name and the module that defines it.
_HOMES = {
    "Client": "client",
    "ForbiddenError": "errors",
    "InvalidRequestError": "errors",
    "MalformedRequestError": "errors",
    "NotFoundError": "errors",
    "ProxyError": "errors",
    "ProxyUnavailableError": "errors",
    "RecordedCall": "recording",
    "RecordingClient": "recording",
    "RequestTooLargeError": "errors",
    "ResultNotSetError": "errors",
    "TokenRequiredError": "errors",
    "UnauthorizedError": "errors",
    "UnexpectedResponseError": "errors",
    "UnsupportedMediaTypeError": "errors",
    "WorkflowClient": "workflow_client",
    "proxy_app": "proxy",
    "proxy_server": "server",
    "serve": "server",
}

__all__ = [
    "Client",
    "ForbiddenError",
    "InvalidRequestError",
    "MalformedRequestError",
    "NotFoundError",
    "ProxyError",
    "ProxyUnavailableError",
    "RecordedCall",
    "RecordingClient",
    "RequestTooLargeError",
    "ResultNotSetError",
    "TokenRequiredError",
    "UnauthorizedError",
    "UnexpectedResponseError",
    "UnsupportedMediaTypeError",
    "WorkflowClient",
    "proxy_app",
    "proxy_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'plait.http' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"plait.http.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
