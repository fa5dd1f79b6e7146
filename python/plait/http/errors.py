"""The errors of plait's ways in over HTTP: what the proxy answers with, what the client raises.

Each one derives from `plait.PlaitError`. An error the proxy answers a request with carries its
HTTP status (`ProxyError.status`) and is sent as `{"_tag": "<ClassName>", "message": ...}`; the
client raises the same class again. This module imports no web library, so `import plait`
stays free of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from plait.errors import InvalidArgumentError, PlaitError

__all__ = [
    "ForbiddenError",
    "InvalidRequestError",
    "MalformedRequestError",
    "NotFoundError",
    "ProxyError",
    "ProxyUnavailableError",
    "RequestTooLargeError",
    "ResultNotSetError",
    "TokenRequiredError",
    "UnauthorizedError",
    "UnexpectedResponseError",
    "UnsupportedMediaTypeError",
]


class ProxyError(PlaitError):
    """A request the proxy refused, or a response the client could not use.

    Attributes:
        status: The HTTP status the proxy answers with (0: no response was had).
        errors: Details, one dict per problem (pydantic's, for validation errors).
    """

    status: ClassVar[int] = 500

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class MalformedRequestError(ProxyError, InvalidArgumentError):
    """The request's body is not JSON (HTTP 400). Nothing was stored."""

    status = 400


class InvalidRequestError(ProxyError, InvalidArgumentError):
    """A request whose path, query or body does not validate (HTTP 422).

    `errors` holds pydantic's details. (A workflow's payload that does not validate is a
    `plait.PayloadError`, also 422.) Nothing was stored.
    """

    status = 422


class UnauthorizedError(ProxyError):
    """The request did not carry the proxy's bearer token (HTTP 401)."""

    status = 401


class ForbiddenError(ProxyError):
    """A proxy with no token answers only on loopback, to a loopback host name (HTTP 403).

    It refused a request that reached it on another address, or named another host (a web page
    whose domain resolves to 127.0.0.1, say). Give the proxy a token to serve beyond loopback.
    """

    status = 403


class NotFoundError(ProxyError, LookupError):
    """No such route: the workflow, deferred or path is not served (HTTP 404)."""

    status = 404


class RequestTooLargeError(ProxyError):
    """The request's body is larger than the proxy accepts (HTTP 413). Nothing was stored."""

    status = 413


class UnsupportedMediaTypeError(ProxyError):
    """A request body that is not declared `application/json` (HTTP 415).

    Refusing other types also keeps a web page from posting to a loopback proxy with a plain
    HTML form, which a browser sends without asking the proxy first.
    """

    status = 415


class ProxyUnavailableError(ProxyError):
    """The client could not reach the proxy, or it answered 503, through every retry."""

    status = 503


class UnexpectedResponseError(ProxyError):
    """The proxy answered with something the client cannot read (not plait's proxy?)."""

    status = 502


class TokenRequiredError(PlaitError, ValueError):
    """Serving the proxy on an address other than loopback needs a bearer token."""


class ResultNotSetError(PlaitError, LookupError):
    """A `RecordingClient` was asked for a result the test did not set (`set_result`)."""
