"""A live proxy for the HTTP tests: uvicorn on a free loopback port, in the test's event loop.

The server is the one `plait serve` runs (`plait.http.proxy_server`), bound to port 0 so the
kernel picks a free port; the test's engine lives on the same loop, so a test can read what
its store holds after each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx

from plait.http import proxy_server


@contextlib.asynccontextmanager
async def live_proxy(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, grace: int | None = None
) -> AsyncIterator[str]:
    """Serves `app` on `port` of `host` (default: a free one) until the block ends.

    Yields its base URL. `grace` shortens how long requests in flight may finish when it
    stops, in seconds (the server's default: 10).
    """
    server = proxy_server(app, host=host, port=port, log_level="warning")
    if grace is not None:
        server.config.timeout_graceful_shutdown = grace
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # the start-up failed: raise why
                msg = "the server stopped before it started"
                raise AssertionError(msg)
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def http_client(base_url: str, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client of the proxy (no plait on the client's side)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, **kwargs) as client:
        yield client


def free_port() -> int:
    """A port nothing listens on now, for a server started later (the client comes first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (each held until all are found)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
