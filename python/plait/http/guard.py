"""Who may call the proxy, and how much they may send: ASGI middleware run before any route.

- With a bearer token, every request but `GET /health` and the dashboard's page and files
  (which hold no data; the routes they call need the token) must carry it
  (`Authorization: Bearer <token>`), compared in constant time.
- Without one, the proxy answers only on loopback: a request that reached it on another
  address, came from one, or names a host other than a loopback one (a web page whose domain
  resolves to 127.0.0.1 — DNS rebinding) is refused with 403.
- A body larger than the limit is refused with 413 before the route sees any of it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from plait.http.errors import (
    ForbiddenError,
    MalformedRequestError,
    ProxyError,
    RequestTooLargeError,
    UnauthorizedError,
)
from plait.http.wire import problem_of

__all__ = ["AccessGuard", "BodyLimit", "is_loopback_host", "send_problem"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Answered without the token: a load balancer's health check knows no secrets.
OPEN_PATHS = frozenset({"/health"})
#: The dashboard's page and files, also answered without the token: they hold no data, and a
#: browser opening the page cannot send a bearer token (the page asks for it, then sends it).
OPEN_TREE = "/dashboard"


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path == OPEN_TREE or path.startswith(OPEN_TREE + "/")


# Cached: parsing an address costs more than the rest of the guard, and a proxy sees few.
@functools.lru_cache(maxsize=1024)
def _is_loopback_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@functools.lru_cache(maxsize=1024)
def _is_loopback_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or _is_loopback_ip(name)


def is_loopback_host(host: str) -> bool:
    """Whether binding to `host` serves loopback only.

    An IP address is checked as it is; a name must resolve to loopback addresses only.
    `""`, `0.0.0.0` and `::` (every interface) are not loopback.

    Example:
        >>> is_loopback_host("127.0.0.1"), is_loopback_host("::1"), is_loopback_host("0.0.0.0")
        (True, True, False)
    """
    if _is_loopback_name(host):
        return True
    if not host or _is_ip(host):
        return False
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(_is_loopback_ip(str(info[4][0])) for info in found)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name(header: str) -> str:
    """The host of a Host header, without its port (`[::1]:3020` -> `::1`)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


async def send_problem(
    send: Send, error: ProxyError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answers with `error`'s status and its JSON body."""
    status, problem = problem_of(error)
    body = problem.model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessGuard:
    """Refuses requests without the bearer token, or, with no token, from beyond loopback.

    Args:
        app: The application it guards.
        token: The bearer token requests must carry (None: loopback only).
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self._token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._token is None:
            refusal = self._beyond_loopback(scope)
            if refusal is not None:
                await send_problem(send, ForbiddenError(refusal))
                return
        elif not _is_open(_route_path(scope)) and not self._authorized(scope):
            await send_problem(
                send,
                UnauthorizedError("this proxy needs its token: Authorization: Bearer <token>"),
                [(b"www-authenticate", b'Bearer realm="plait"')],
            )
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        header = _header(scope, b"authorization") or ""
        scheme, _, given = header.partition(" ")
        # Compared whatever the scheme, so a wrong one takes as long as a wrong token.
        matches = hmac.compare_digest(given.strip().encode("latin-1"), self._token)
        return matches and scheme.lower() == "bearer"

    @staticmethod
    def _beyond_loopback(scope: Scope) -> str | None:
        """Why a request must be refused by a proxy with no token, or None if it may pass."""
        for side in ("server", "client"):
            address = scope.get(side)
            if address is not None and not _is_loopback_ip(str(address[0])):
                return (
                    f"this proxy has no token, so it answers only on loopback; the request's "
                    f"{side} address is {address[0]}"
                )
        host = _header(scope, b"host")
        if host is not None and not _is_loopback_name(_host_name(host)):
            return (
                f"this proxy has no token, so it answers only to loopback host names, not {host!r}"
            )
        return None


class BodyLimit:
    """Refuses a request body larger than `max_bytes` with 413, before the route reads it.

    The body is read here (up to the limit) and handed on whole, so a route never holds a
    partial one.

    Args:
        app: The application it guards.
        max_bytes: The largest body accepted.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_problem(send, MalformedRequestError("invalid Content-Length header"))
                return
            if int(declared) > self.max_bytes:
                await send_problem(send, self._too_large(int(declared)))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                await send_problem(send, self._too_large(size))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then waits for the disconnect, as a server's does

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"the request body ({size} bytes or more) is larger than this proxy accepts "
            f"({self.max_bytes} bytes)"
        )
