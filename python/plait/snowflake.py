"""Snowflake ids: 64-bit, time-ordered, unique per machine id.

Layout (Effect's): 42 bits of milliseconds since 2025-01-01T00:00:00Z, 10 bits of machine id,
12 bits of sequence. The 42 bits last until 2164; ids pass 2**63 in 2094, so a signed 64-bit
column holds them until then.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from plait._native import SnowflakeGenerator, snowflake_make, snowflake_parts
from plait.errors import InvalidArgumentError

__all__ = ["EPOCH", "Snowflake", "SnowflakeGenerator", "SnowflakeParts"]

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
"""The instant a snowflake's timestamp counts from."""


class SnowflakeParts(NamedTuple):
    """The three fields of a snowflake."""

    timestamp_ms: int
    """Milliseconds since the Unix epoch."""
    machine_id: int
    sequence: int


class Snowflake(int):
    """A snowflake id: an `int` that can tell its parts.

    Example:
        >>> s = Snowflake.make(datetime(2025, 6, 1, 12, tzinfo=UTC), machine_id=7, sequence=42)
        >>> s
        Snowflake(54901761638428714)
        >>> s.machine_id, s.sequence, s.timestamp.isoformat()
        (7, 42, '2025-06-01T12:00:00+00:00')
    """

    __slots__ = ()

    @classmethod
    def make(cls, timestamp: datetime | int, machine_id: int, sequence: int) -> Snowflake:
        """Builds a snowflake.

        Args:
            timestamp: A timezone-aware datetime, or milliseconds since the Unix epoch.
            machine_id: 0 to 1023.
            sequence: 0 to 4095.

        Raises:
            InvalidArgumentError: A part is out of range, or the datetime is naive.
        """
        if isinstance(timestamp, datetime):
            if timestamp.tzinfo is None:
                raise InvalidArgumentError(
                    f"timestamp {timestamp.isoformat()} is naive: give it a timezone"
                )
            timestamp = (timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // _ONE_MS
        return cls(snowflake_make(timestamp, machine_id, sequence))

    @property
    def parts(self) -> SnowflakeParts:
        """Timestamp (ms since the Unix epoch), machine id and sequence."""
        return SnowflakeParts(*snowflake_parts(self))

    @property
    def timestamp_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return self.parts.timestamp_ms

    @property
    def timestamp(self) -> datetime:
        """The instant the id was made, in UTC."""
        return datetime.fromtimestamp(self.parts.timestamp_ms / 1000, tz=UTC)

    @property
    def machine_id(self) -> int:
        """The machine that made the id."""
        return self.parts.machine_id

    @property
    def sequence(self) -> int:
        """The id's place within its millisecond."""
        return self.parts.sequence

    def __repr__(self) -> str:
        return f"Snowflake({int(self)})"


_ONE_MS = datetime.resolution * 1000
