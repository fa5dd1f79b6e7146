"""Workflow execution ids, activity idempotency keys and deferred tokens.

All three are computed exactly as Effect computes them, so ids and tokens cross between a
plait deployment and an Effect one.
"""

from __future__ import annotations

from typing import NamedTuple

from plait._native import (
    activity_idempotency_key,
    encode_deferred_token,
    execution_id,
    execution_ids,
    parse_deferred_token,
)
from plait.errors import InvalidArgumentError

__all__ = ["DeferredToken", "activity_idempotency_key", "execution_id", "execution_ids"]


def checked_name(what: str, name: object) -> str:
    """`name`, if it can name a durable thing (a workflow, step, deferred or clock).

    Names end up in the journal's keys and in tokens: a non-empty str, valid UTF-8 (no lone
    surrogates), with no NUL character (PostgreSQL cannot store one).

    Raises:
        InvalidArgumentError: It cannot.
    """
    if not isinstance(name, str) or not name:
        msg = f"{what} name must be a non-empty str, got {name!r}"
        raise InvalidArgumentError(msg)
    if "\0" in name:
        msg = f"{what} name {name!r} holds a NUL character"
        raise InvalidArgumentError(msg)
    try:
        name.encode()
    except UnicodeEncodeError:
        msg = f"{what} name {name!r} is not valid UTF-8 (a lone surrogate)"
        raise InvalidArgumentError(msg) from None
    return name


class DeferredToken(NamedTuple):
    """The address of a durable deferred: which workflow run, which deferred.

    Example:
        >>> token = DeferredToken("EmailWorkflow", execution_id("EmailWorkflow", "test-email-1"),
        ...                       "EmailTrigger").encode()
        >>> token[:24]
        'WyJFbWFpbFdvcmtmbG93Iiwi'
        >>> DeferredToken.parse(token).deferred_name
        'EmailTrigger'
    """

    workflow_name: str
    execution_id: str
    deferred_name: str

    def encode(self) -> str:
        """The token string: unpadded base64url of `[workflow, execution id, deferred]`."""
        return encode_deferred_token(*self)

    @classmethod
    def parse(cls, token: str) -> DeferredToken:
        """Parses a token string.

        Raises:
            MalformedTokenError: The string is not a deferred token.
        """
        return cls(*parse_deferred_token(token))
