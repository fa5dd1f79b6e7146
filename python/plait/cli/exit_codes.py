"""The exit codes of the `plait` command, which scripts may rely on."""

from __future__ import annotations

from enum import IntEnum

from plait.errors import (
    DeferredTokenError,
    EngineLockedError,
    InvalidArgumentError,
    StoreConnectError,
    UnknownExecutionError,
)
from plait.http.errors import (
    ForbiddenError,
    NotFoundError,
    ProxyUnavailableError,
    TokenRequiredError,
    UnauthorizedError,
)

__all__ = ["ExitCode", "exit_code_of"]


class ExitCode(IntEnum):
    """What a `plait` command's exit status means.

    ==  ===========  ==========================================================================
    0   OK           It did what was asked.
    1   FAILED       It failed in a way the codes below do not name (the message says how);
                     `plait serve` could not start its server (the port is taken, say).
    2   USAGE        The command line is wrong (an unknown option, a missing argument).
    3   NOT_FOUND    No such workflow, execution, module or route.
    4   UNREACHABLE  The proxy or the database cannot be reached.
    5   REFUSED      Not allowed: a wrong or missing token, a bind beyond loopback without a
                     token, or a database another engine holds.
    6   INVALID      The proxy refused the input as malformed or invalid.
    ==  ===========  ==========================================================================
    """

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNREACHABLE = 4
    REFUSED = 5
    INVALID = 6


# The first class that matches names the code.
_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UnknownExecutionError, ExitCode.NOT_FOUND),
    (DeferredTokenError, ExitCode.NOT_FOUND),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ModuleNotFoundError, ExitCode.NOT_FOUND),
    (ProxyUnavailableError, ExitCode.UNREACHABLE),
    (StoreConnectError, ExitCode.UNREACHABLE),
    (UnauthorizedError, ExitCode.REFUSED),
    (ForbiddenError, ExitCode.REFUSED),
    (TokenRequiredError, ExitCode.REFUSED),
    (EngineLockedError, ExitCode.REFUSED),
    (InvalidArgumentError, ExitCode.INVALID),
)


def exit_code_of(error: BaseException) -> ExitCode:
    """The exit code a command that failed with `error` ends with."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return ExitCode.FAILED
