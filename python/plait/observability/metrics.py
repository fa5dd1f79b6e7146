"""Prometheus metrics of plait, off until enabled.

`enable_metrics()` registers plait's collectors (in `prometheus_client`'s default registry
unless given one); from then on the engine, the entity runtime and the journal count into them.
Before, `metrics()` is None and the hot paths pay that one check. The proxy serves them on
`/metrics`; a runner or worker serves them on a port of its own with `serve_metrics`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["EngineGauges", "Metrics", "enable_metrics", "metrics", "serve_metrics"]

log = logging.getLogger("plait")

# Seconds: from a sub-millisecond activity or commit to a slow external call.
_DURATIONS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Metrics:
    """The collectors of plait in one registry, and the Python read of their values.

    Attributes:
        registry: Where they are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """Registers plait's collectors in `registry`."""
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.executions_started = Counter(
            "plait_executions_started",
            "Workflow executions started (a new execution stored).",
            ["workflow"],
            registry=registry,
        )
        self.executions_completed = Counter(
            "plait_executions_completed",
            "Workflow executions complete with a success.",
            ["workflow"],
            registry=registry,
        )
        self.executions_failed = Counter(
            "plait_executions_failed",
            "Workflow executions complete with a failure, an interrupt or a defect.",
            ["workflow"],
            registry=registry,
        )
        self.executions_suspended = Counter(
            "plait_executions_suspended",
            "Runs of workflow executions that ended suspended.",
            ["workflow"],
            registry=registry,
        )
        self.runs_active = Gauge(
            "plait_workflow_runs_active",
            "Runs of workflow executions in progress in this process.",
            registry=registry,
        )
        self.activity_duration = Histogram(
            "plait_activity_duration_seconds",
            "Activity attempts run (not replayed), by outcome.",
            ["activity", "outcome"],
            buckets=_DURATIONS,
            registry=registry,
        )
        self.activity_retries = Counter(
            "plait_activity_retries",
            "Activity attempts after the first (Activity.retry).",
            ["activity"],
            registry=registry,
        )
        self.timer_lag = Histogram(
            "plait_timer_lag_seconds",
            "How late a durable timer scheduled by this process woke its execution.",
            buckets=_DURATIONS,
            registry=registry,
        )
        self.commit_batch_ops = Histogram(
            "plait_commit_batch_ops",
            "Operations per store commit batch.",
            buckets=_BATCH_SIZES,
            registry=registry,
        )
        self.commit_duration = Histogram(
            "plait_commit_duration_seconds",
            "From a batch handed to the store to its commit answered.",
            buckets=_DURATIONS,
            registry=registry,
        )
        self.entity_messages = Counter(
            "plait_entity_messages",
            "Entity requests handled on this runner, by entity, RPC and outcome.",
            ["entity", "rpc", "outcome"],
            registry=registry,
        )
        self.entity_requests_sent = Counter(
            "plait_entity_requests_sent",
            "Entity requests sent from this process, by entity and RPC.",
            ["entity", "rpc"],
            registry=registry,
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._gauges: list[Callable[[], Iterator[Metric]]] = []
        self._engines: list[EngineGauges] = []
        registry.register(_Callbacks(self._gauges))
        self.add_gauges(self._engine_gauges)

    def of(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: the hot paths skip its lock and checks."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def add_gauges(self, read: Callable[[], Iterator[Metric]]) -> None:
        """Adds metrics read at each scrape (a runner's cluster view, a mailbox depth)."""
        self._gauges.append(read)

    def remove_gauges(self, read: Callable[[], Iterator[Metric]]) -> None:
        """Stops reading `read` (its runner stopped)."""
        if read in self._gauges:
            self._gauges.remove(read)

    def watch(self, engine: EngineGauges) -> None:
        """Adds a started engine's gauges to the scrapes."""
        self._engines.append(engine)

    def unwatch(self, engine: EngineGauges) -> None:
        """Removes a closed engine's gauges."""
        if engine in self._engines:
            self._engines.remove(engine)

    async def refresh(self) -> None:
        """Reads again what the engines on this loop count in their stores, if due.

        What an exposition served on the loop awaits first: a scrape there cannot wait for
        the loop it runs on.
        """
        loop = asyncio.get_running_loop()
        for engine in list(self._engines):
            if engine.loop is loop:
                await engine.refresh()

    def _engine_gauges(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        engines = list(self._engines)
        depths: dict[str, int] = {}
        for engine in engines:
            for entity, depth in engine.mailbox_depths():
                depths[entity] = depths.get(entity, 0) + depth
        family = GaugeMetricFamily(
            "plait_entity_mailbox_depth",
            "Entity requests waiting in this process's mailboxes (queued behind the running"
            " ones, or ready and not yet started), by entity type.",
            labels=["entity"],
        )
        for entity in sorted(depths):
            family.add_metric([entity], depths[entity])
        yield family
        # Every engine of a process on one database would count the same executions: one
        # speaks for the store, the first started on the loop serving the scrape (the proxy's),
        # else the first started.
        suspended = None
        if engines:
            running = _running_loop()
            speaker = next((e for e in engines if e.loop is running), engines[0])
            suspended = speaker.suspended()
        if suspended is not None:
            yield GaugeMetricFamily(
                "plait_executions_suspended_stored",
                f"Executions suspended in the store (read at most every {_MAX_AGE:g} s, counted"
                f" up to {_CAP:,}: that value means at least).",
                value=suspended,
            )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's value now (`plait_executions_started_total`, ...); None if absent."""
        return self.registry.get_sample_value(name, labels or {})


# How old a count read from the store may be when scraped, and where the count stops: at most
# one capped count query per engine per this many seconds, however often it is scraped.
_MAX_AGE = 15.0
_CAP = 10_000
# How long a scrape from another thread waits for the engine's loop to read the count.
_WAIT = 2.0


class EngineGauges:
    """What one started engine reports at each scrape.

    The depths of its mailboxes, read from its work source (one call per scrape), and the count
    of executions suspended in its store: a query, so it is kept `max_age` seconds and counted
    up to `cap`. A scrape from a thread without a loop (a metrics port's) waits up to two
    seconds for a count due to be read again. A scrape on a loop never blocks it: on the
    engine's loop `Metrics.refresh` has read it first (the proxy's `/metrics`), on another the
    read is started for the next scrape.

    Args:
        loop: The engine's loop, where the store is read.
        mailbox_depths: The requests waiting in its mailboxes, by entity type.
        count_suspended: Counts the suspended executions, up to the cap it is given.
        max_age: Seconds a count is kept.
        cap: Where the count stops.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        mailbox_depths: Callable[[], list[tuple[str, int]]],
        count_suspended: Callable[[int], Awaitable[int]],
        *,
        max_age: float = _MAX_AGE,
        cap: int = _CAP,
    ) -> None:
        self.loop = loop
        self.mailbox_depths = mailbox_depths
        self._count = count_suspended
        self._max_age = max_age
        self._cap = cap
        self._value: int | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Future[None] | None = None

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < self._max_age

    async def refresh(self) -> None:
        """Counts the suspended executions again if the count is older than `max_age`.

        One count at a time, whoever asks.
        """
        if self._fresh():
            return
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        try:
            self._value = await self._count(self._cap)
        except Exception:  # the store is unreachable: the last count stays, marked stale
            log.warning("plait_executions_suspended_stored: the store could not be read")
            self._value = None
        finally:
            # A failed read waits its turn too: scrapes do not retry a database that is down.
            self._read_at = time.monotonic()
            self._reading = None

    def suspended(self) -> int | None:
        """The count of suspended executions for a scrape (None until read, or if unreadable)."""
        if self._fresh() or not self.loop.is_running():
            return self._value
        running = _running_loop()
        if running is self.loop:
            # On the loop it needs: read for the next scrape, this one gets the last count.
            if self._reading is None:
                self._reading = self.loop.create_task(self._read())
            return self._value
        if running is not None:
            # On another loop, which must not block: the next scrape gets it.
            asyncio.run_coroutine_threadsafe(self.refresh(), self.loop)
            return self._value
        waited = asyncio.run_coroutine_threadsafe(self.refresh(), self.loop)
        try:
            waited.result(timeout=_WAIT)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            waited.cancel()
        return self._value


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Callbacks:
    """A collector of the metrics read at scrape time."""

    def __init__(self, reads: list[Callable[[], Iterator[Metric]]]) -> None:
        self._reads = reads

    def collect(self) -> Iterator[Metric]:
        for read in list(self._reads):
            yield from read()

    def describe(self) -> list[Any]:
        return []  # read at scrape time: nothing to check at registration


_current: Metrics | None = None


def metrics() -> Metrics | None:
    """The metrics of plait if enabled, else None."""
    return _current


def enable_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Starts counting plait's metrics (once per process); returns them.

    Args:
        registry: Where to register them; `prometheus_client.REGISTRY` by default. Only the
            first call's registry is used.

    Raises:
        ImportError: `prometheus_client` is not installed (`pip install plait[observability]`).
    """
    global _current
    if _current is None:
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        _current = Metrics(registry)
    return _current


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Metrics:
    """Enables the metrics and serves them for Prometheus on `addr:port` (a thread).

    Returns:
        The metrics served.
    """
    from prometheus_client import start_http_server

    enabled = enable_metrics()
    start_http_server(port, addr=addr, registry=enabled.registry)
    return enabled


async def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type (enabling them).

    Served on an engine's loop: what its gauges read from the store is read first if due.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    enabled = enable_metrics()
    await enabled.refresh()
    return generate_latest(enabled.registry), CONTENT_TYPE_LATEST
