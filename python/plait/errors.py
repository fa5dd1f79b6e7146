"""The exceptions plait raises. Every one derives from `PlaitError`."""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ForkedProcessError",
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


class ForkedProcessError(PlaitError):
    """An object made before the process forked was used in the child.

    Its state is the parent's (a snowflake generator would repeat the parent's ids) and its
    locks may be held by threads that do not exist in the child. Make a new one in the child.
    """
