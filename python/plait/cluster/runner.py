"""A runner of a cluster: one process among many sharing a PostgreSQL database.

Every runner computes the same shard → runner assignment from the healthy runners (Effect's
ring), holds a fenced lease on each shard it serves, and runs the entities of those shards.
Persisted requests to an entity on another runner are saved for its owner, which the save's
commit wakes; their replies come back from storage, woken by the reply's commit. The Rust core
does the membership (`rust/src/cluster/sharding.rs`); this module starts and stops it.

Example:
    ```python
    async with plait.Runner(
        "postgresql://127.0.0.1/app",
        config=plait.ShardingConfig(runner_address=plait.RunnerAddress(host="10.0.0.5")),
    ):
        print(await Counter.client("c-1").increment(Increment(by=1)))
    ```
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plait import _bridge
from plait._native import Sharding
from plait.clocks import milliseconds_ceil
from plait.cluster.config import ShardingConfig
from plait.cluster.runtime import runtime_of
from plait.engine import Engine, current_engine
from plait.errors import InvalidArgumentError
from plait.observability.metrics import Metrics, enable_metrics, metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from plait._native import _ShardingOptions

__all__ = ["ClusterView", "Runner"]


@dataclass(frozen=True)
class ClusterView:
    """What a runner sees of its cluster (Effect's cluster gauges, and the assignment).

    Attributes:
        address: This runner's address.
        machine_id: Its machine id (the snowflake ids of its requests carry it).
        runners: Runners registered.
        healthy_runners: Runners healthy, in the rings.
        shards: The shards whose lease this runner holds (`"group:id"`), sorted.
        releasing: Shards it is draining before their release.
        assignments: Every shard's owner by the rings.
        entities: Entity instances resident on this runner.
        runner_entities: Every registered runner's resident entity instances, as of its last
            heartbeat (`shard_lock_refresh_interval`).
        singletons: The singletons running on this runner.
        fenced_writes: Writes of replies and state the database refused (or the runner held
            back) because the shard's lease was no longer this runner's: a runner that was
            paused or cut off past its lease shows them.
    """

    address: str
    machine_id: int
    runners: int
    healthy_runners: int
    shards: list[str]
    releasing: list[str]
    assignments: dict[str, str]
    entities: int
    singletons: list[str]
    fenced_writes: int
    runner_entities: dict[str, int]


def _ms(seconds: float) -> int:
    return milliseconds_ceil(seconds)


class Runner:
    """A runner of a cluster on PostgreSQL: serves the entities of the shards it holds.

    A runner listens at its address (or `runner_listen_address`) for the requests other
    processes send its entities, over HTTP/2; persisted ones are saved by their sender
    first, and left to the database (which wakes their owner) if that way fails.

    With `runner_address=None` in its configuration it is a client-only process: it holds no
    shard, runs no entity and listens nowhere; its requests go to the runners of their
    entities as a runner's do, their replies come back on its long polls (a web server that
    only sends, say).

    Args:
        url: The cluster's database, `postgresql://...` (or a SQLite file: one runner only).
        config: How the runner behaves (address, weight, lock times...); by default from
            `PLAIT_*` environment variables.
        prefix: The table prefix, the same on every runner.
        durability: `"full"` (the default) or `"normal"` (see `plait.Engine.postgres`).
        metrics_port: Serve plait's metrics for Prometheus on this port (a thread of
            `prometheus_client`'s), with the cluster gauges; needs the `metrics` extra.
        metrics_address: The address that serves them (loopback by default).
    """

    def __init__(
        self,
        url: str,
        *,
        config: ShardingConfig | None = None,
        prefix: str = "plait_",
        durability: str = "full",
        metrics_port: int | None = None,
        metrics_address: str = "127.0.0.1",
    ) -> None:
        self.metrics_port = metrics_port
        self.metrics_address = metrics_address
        self._metrics_server: Any = None
        self.config = config if config is not None else ShardingConfig()
        address = self.config.runner_address
        # No address: a client-only process, which sends and holds no shard.
        self.address = "" if address is None else str(address)
        self._postgres = url.startswith(("postgres://", "postgresql://"))
        if address is None and not self._postgres:
            msg = "a client-only process needs a cluster on PostgreSQL"
            raise InvalidArgumentError(msg)
        self.engine = Engine.url(
            url,
            prefix=prefix,
            durability=durability,
            sharding=self.config,
            cluster=self._postgres,
        )
        self._sharding: Sharding | None = None
        self._watch: asyncio.Task[None] | None = None
        self._token: contextvars.Token[Engine | None] | None = None

    async def start(self) -> None:
        """Opens the store, registers the runner and begins acquiring its shards.

        Raises:
            StoreConnectError: The database cannot be reached.
        """
        if self.metrics_port is not None:
            enable_metrics()  # before the engine starts: it adds its gauges then
        await self.engine.start()
        self._start_metrics()
        if not self._postgres:
            return  # a SQLite file: this one process serves every shard
        store, source = self.engine.store, self.engine.work_source
        assert store is not None
        config = self.config
        listen = config.runner_listen_address
        options: _ShardingOptions = {
            "address": self.address,
            "listen": None if listen is None else str(listen),
            "send_retry_ms": _ms(config.send_retry_interval.total_seconds()),
            "weight": config.runner_shard_weight,
            "available_groups": sorted(set(config.available_shard_groups)),
            "groups": config.shard_groups,
            "shards_per_group": config.shards_per_group,
            "lock_expiration_ms": _ms(config.shard_lock_expiration.total_seconds()),
            "refresh_interval_ms": _ms(config.effective_refresh_interval.total_seconds()),
            "refresh_assignments_ms": _ms(config.refresh_assignments_interval.total_seconds()),
            "termination_timeout_ms": _ms(config.entity_termination_timeout.total_seconds()),
            "advisory": not config.shard_lock_disable_advisory,
            "health_check_ms": _ms(config.runner_health_check_interval.total_seconds()),
        }
        if not self.address:
            try:
                client: Sharding = await _bridge.call(
                    lambda bridge: Sharding.client(bridge, store, source, options)
                )
            except BaseException:
                await self.engine.close()
                raise
            self._sharding = client
            runtime_of(self.engine).join(client)
            return
        try:
            sharding: Sharding = await _bridge.call(
                lambda bridge: Sharding.start(bridge, store, source, options)
            )
        except BaseException:
            await self.engine.close()
            raise
        self._sharding = sharding
        runtime = runtime_of(self.engine)
        runtime.join(sharding)
        self._watch = asyncio.get_running_loop().create_task(self._follow_shards())

    def _start_metrics(self) -> None:
        """Serves the metrics on `metrics_port` if given; adds the cluster gauges if enabled."""
        if self.metrics_port is not None:
            enabled = enable_metrics()
            from prometheus_client import start_http_server

            self._metrics_server = start_http_server(
                self.metrics_port, addr=self.metrics_address, registry=enabled.registry
            )
        counters = metrics()
        if counters is not None:
            _RUNNERS.add(self)
            if not _gauges_added:
                _add_gauges(counters)

    async def _follow_shards(self) -> None:
        """Starts the singletons of the shards held, as they come.

        The release of a shard stops its singletons before the lease goes.
        """
        runtime = runtime_of(self.engine)
        while self._sharding is not None:
            runtime.singletons.sync(set(self._sharding.view().shards))
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Leaves the cluster, then closes.

        It unregisters, lets its entities finish (within the termination timeout) and releases
        its shards for the others.
        """
        _RUNNERS.discard(self)
        if self._metrics_server is not None:
            server, thread = self._metrics_server
            self._metrics_server = None
            server.shutdown()
            server.server_close()
            thread.join()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._sharding is not None:
            sharding, self._sharding = self._sharding, None
            await _bridge.call(sharding.close)
        await self.engine.close()

    async def __aenter__(self) -> Runner:
        await self.start()
        self._token = current_engine.set(self.engine)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._token is not None:
            current_engine.reset(self._token)
            self._token = None
        await self.close()

    def view(self) -> ClusterView:
        """What this runner sees of the cluster now.

        Raises:
            InvalidArgumentError: The runner is not started on PostgreSQL.
        """
        if self._sharding is None:
            msg = "the runner is not part of a cluster: start it on PostgreSQL"
            raise InvalidArgumentError(msg)
        view = self._sharding.view()
        return ClusterView(
            address=self.address,
            machine_id=view.machine_id,
            runners=view.runners,
            healthy_runners=view.healthy_runners,
            shards=list(view.shards),
            releasing=list(view.releasing),
            assignments=dict(view.assignments),
            entities=self.engine.work_source.resident(),
            singletons=runtime_of(self.engine).singletons.running(),
            fenced_writes=view.fenced_writes,
            runner_entities=dict(view.runner_entities),
        )


# The runners of this process whose cluster gauges the metrics read (one family per gauge,
# a sample per runner).
_RUNNERS: weakref.WeakSet[Runner] = weakref.WeakSet()
_gauges_added = False

_GAUGES = (
    ("plait_cluster_runners", "Runners registered.", lambda v: v.runners),
    (
        "plait_cluster_runners_healthy",
        "Runners healthy, in the rings.",
        lambda v: v.healthy_runners,
    ),
    ("plait_cluster_shards", "Shards whose lease this runner holds.", lambda v: len(v.shards)),
    ("plait_cluster_entities", "Entity instances resident on this runner.", lambda v: v.entities),
    ("plait_cluster_singletons", "Singletons running on this runner.", lambda v: len(v.singletons)),
    (
        "plait_cluster_fenced_writes",
        "Writes refused because the shard's lease was no longer this runner's.",
        lambda v: v.fenced_writes,
    ),
)


def _add_gauges(counters: Metrics) -> None:
    global _gauges_added
    _gauges_added = True
    counters.add_gauges(_cluster_gauges)


def _cluster_gauges() -> Iterator[Metric]:
    """Effect's cluster gauges, read at each scrape from each runner's view."""
    from prometheus_client.core import GaugeMetricFamily

    views = [r.view() for r in list(_RUNNERS) if r._sharding is not None]
    for name, text, read in _GAUGES:
        family = GaugeMetricFamily(name, text, labels=["runner"])
        for view in views:
            family.add_metric([view.address], read(view))
        yield family
