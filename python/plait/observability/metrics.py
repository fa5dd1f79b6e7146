"""Prometheus metrics of plait, off until enabled.

`enable_metrics()` registers plait's collectors (in `prometheus_client`'s default registry
unless given one); from then on the engine, the entity runtime and the journal count into them.
Before, `metrics()` is None and the hot paths pay that one check. The proxy serves them on
`/metrics`; a runner or worker serves them on a port of its own with `serve_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["Metrics", "enable_metrics", "metrics", "serve_metrics"]

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
        registry.register(_Callbacks(self._gauges))

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

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's value now (`plait_executions_started_total`, ...); None if absent."""
        return self.registry.get_sample_value(name, labels or {})


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


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type (enabling them)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(enable_metrics().registry), CONTENT_TYPE_LATEST
