"""Workflow execution ids, activity idempotency keys and deferred tokens.

All three are computed exactly as Effect computes them, so ids and tokens cross between a
plait deployment and an Effect one.
"""

from __future__ import annotations

from typing import NamedTuple

from plait import _native
from plait._native import activity_idempotency_key, execution_id, execution_ids

__all__ = ["DeferredToken", "activity_idempotency_key", "execution_id", "execution_ids"]


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
        return _native.encode_deferred_token(*self)

    @classmethod
    def parse(cls, token: str) -> DeferredToken:
        """Parses a token string.

        Raises:
            MalformedTokenError: The string is not a deferred token.
        """
        return cls(*_native.parse_deferred_token(token))
