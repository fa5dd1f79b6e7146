"""The exceptions plait raises. Every one derives from `PlaitError`."""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "InvalidArgumentError",
    "MalformedTokenError",
    "PlaitError",
    "UnknownRunnerError",
]


class PlaitError(Exception):
    """Root of every exception plait raises."""


class InvalidArgumentError(PlaitError, ValueError):
    """An argument is out of range or malformed; the message names the value."""


class MalformedTokenError(InvalidArgumentError):
    """A deferred token is not base64url of a JSON array of three strings."""


class UnknownRunnerError(InvalidArgumentError):
    """A runner named in a call is not in the hash ring."""


class ClosedError(PlaitError):
    """The service was closed; it accepts no more waits."""
