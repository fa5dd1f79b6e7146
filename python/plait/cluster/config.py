"""The cluster's configuration: Effect's `ShardingConfig`, every option with its default.

Set in code (`ShardingConfig(shards_per_group=1024)`) or from environment variables named
`PLAIT_<OPTION>` in upper case (`PLAIT_SHARDS_PER_GROUP=1024`, durations in seconds or as ISO
8601 / `"10s"`-style strings pydantic reads); code wins over the environment. A bad value is
refused when the configuration is made, with a message naming the option.

Example:
    >>> ShardingConfig().shards_per_group
    300
    >>> ShardingConfig(entity_max_idle_time=timedelta(seconds=30)).entity_max_idle_time
    datetime.timedelta(seconds=30)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RunnerAddress", "ShardingConfig"]


def _seconds_text(value: object) -> object:
    """A duration given as a number in text (an environment variable) is seconds."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Positive = Annotated[int, Field(gt=0)]
Duration = Annotated[timedelta, BeforeValidator(_seconds_text), Field(gt=timedelta(0))]


class RunnerAddress(BaseSettings):
    """Where other runners reach a runner: a host and a port."""

    model_config = SettingsConfigDict(frozen=True)

    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 34431

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class ShardingConfig(BaseSettings):
    """How a runner of the cluster behaves (Effect's `ShardingConfig`, same defaults).

    Attributes:
        runner_address: Where other runners reach this one; None: a client-only process that
            sends and holds no shard.
        runner_listen_address: Where it listens, if not at `runner_address`.
        runner_shard_weight: Its relative share of the shards.
        available_shard_groups: Every shard group of the cluster.
        assigned_shard_groups: The groups this runner serves (within the available ones).
        shards_per_group: Shards per group; the same on every runner.
        shard_lock_refresh_interval: How often held shard leases are renewed.
        shard_lock_expiration: How long a lease (and a runner's heartbeat) lasts unrenewed.
        shard_lock_disable_advisory: Lease rows only, without session advisory locks.
        preemptive_shutdown: Leave the cluster as soon as any entity type starts closing.
        entity_mailbox_capacity: Default requests an entity instance holds ("unbounded": no
            limit).
        max_resident_entities: Entity instances resident on a runner at once ("unbounded").
        unprocessed_message_batch_size: Stored requests read at once.
        entity_max_idle_time: Default idle time before an instance is passivated.
        entity_registration_timeout: How long a stored request for an entity type no runner
            registered waits before it is answered with a defect.
        entity_termination_timeout: How long an instance may take to finish its requests when
            its shard moves or the runner stops.
        entity_message_poll_interval: How often stored requests are looked for.
        entity_reply_poll_interval: How often a caller looks for a stored reply.
        send_retry_interval: Delay before a send to a shard in motion is tried again.
        refresh_assignments_interval: How often the runners and the ring are read again.
        runner_health_check_interval: How often runners are pinged.
        simulate_remote_serialization: Encode and decode volatile requests even in process.
    """

    model_config = SettingsConfigDict(env_prefix="PLAIT_", frozen=True, extra="forbid")

    runner_address: RunnerAddress | None = Field(default_factory=RunnerAddress)
    runner_listen_address: RunnerAddress | None = None
    runner_shard_weight: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    available_shard_groups: list[str] = Field(default_factory=lambda: ["default"])
    assigned_shard_groups: list[str] = Field(default_factory=lambda: ["default"])
    shards_per_group: Annotated[int, Field(ge=1, le=1 << 20)] = 300
    shard_lock_refresh_interval: Duration = timedelta(seconds=10)
    shard_lock_expiration: Duration = timedelta(seconds=35)
    shard_lock_disable_advisory: bool = False
    preemptive_shutdown: bool = True
    entity_mailbox_capacity: Positive | Literal["unbounded"] = 4_096
    max_resident_entities: Positive | Literal["unbounded"] = 10_000
    unprocessed_message_batch_size: Positive = 1_024
    entity_max_idle_time: Duration = timedelta(minutes=1)
    entity_registration_timeout: Duration = timedelta(minutes=1)
    entity_termination_timeout: Duration = timedelta(seconds=15)
    entity_message_poll_interval: Duration = timedelta(seconds=10)
    entity_reply_poll_interval: Duration = timedelta(milliseconds=200)
    send_retry_interval: Duration = timedelta(milliseconds=100)
    refresh_assignments_interval: Duration = timedelta(seconds=3)
    runner_health_check_interval: Duration = timedelta(minutes=1)
    simulate_remote_serialization: bool = True

    @model_validator(mode="after")
    def _lock_times(self) -> ShardingConfig:
        if self.shard_lock_refresh_interval >= self.shard_lock_expiration:
            msg = (
                "shard_lock_refresh_interval must be shorter than shard_lock_expiration, got "
                f"{self.shard_lock_refresh_interval} and {self.shard_lock_expiration}"
            )
            raise ValueError(msg)
        return self

    @property
    def effective_refresh_interval(self) -> timedelta:
        """How often leases are renewed: Effect's `min(refresh, expiration / 3)`."""
        return min(self.shard_lock_refresh_interval, self.shard_lock_expiration / 3)

    @property
    def shard_groups(self) -> list[str]:
        """The groups this runner serves: the assigned ones that are available, sorted."""
        available = set(self.available_shard_groups)
        return sorted(g for g in set(self.assigned_shard_groups) if g in available)
