"""Running the proxy standalone, on uvicorn: the loopback rule is checked before binding."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from plait.http.errors import TokenRequiredError
from plait.http.guard import is_loopback_host
from plait.http.wire import DEFAULT_PORT

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ProxyServer", "check_bind", "proxy_server", "serve"]

DEFAULT_HOST = "127.0.0.1"
#: How long a stopping server lets requests in flight finish before cancelling them.
#: An `execute` still waiting then fails on the client's side, which retries it: the
#: execution itself is stored and continues when an engine runs again.
GRACEFUL_SHUTDOWN_SECONDS = 10


def check_bind(host: str, token: str | None) -> None:
    """Refuses to serve beyond loopback without a token.

    Raises:
        TokenRequiredError: `host` is not a loopback address and `token` is None.
    """
    if token is None and not is_loopback_host(host):
        msg = (
            f"serving on {host!r}, beyond loopback, needs a bearer token (--token, or "
            "PLAIT_TOKEN); without one the proxy binds only to loopback, such as 127.0.0.1"
        )
        raise TokenRequiredError(msg)


class ProxyServer(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT or SIGTERM without raising the signal again.

    uvicorn raises a stop signal again once it has shut down, which kills a process with the
    signal's default action before anything after `serve()` runs. Here `serve()` returns, so
    the engine closes after the server and `plait serve` exits 0 when told to stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # noqa: D102
        if threading.current_thread() is not threading.main_thread():  # only it gets signals
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def proxy_server(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str = "info",
) -> ProxyServer:
    """A uvicorn server for `app` (from `proxy_app`), not yet started.

    `await server.serve()` runs it in the current event loop; `port=0` takes a free port,
    found afterwards in `server.servers[0].sockets[0].getsockname()`.

    Raises:
        TokenRequiredError: `host` is beyond loopback and `app` has no token.
    """
    state = getattr(app, "state", None)
    check_bind(host, getattr(state, "plait_token", None))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return ProxyServer(config)


def serve(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str = "info",
) -> None:
    """Serves `app` (from `proxy_app`) until the process is told to stop (Ctrl-C, SIGTERM).

    Raises:
        TokenRequiredError: `host` is beyond loopback and `app` has no token.
    """
    proxy_server(app, host=host, port=port, log_level=log_level).run()
