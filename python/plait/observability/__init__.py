"""What plait tells operators: OpenTelemetry spans, Prometheus metrics, structured log records.

One module per signal: `tracing` (spans that join the host's tracer provider, and the trace
context that persists with an execution), `metrics` (Prometheus collectors, off until enabled)
and `logs` (the fields of plait's log records). plait depends only on `opentelemetry-api` and
`prometheus_client`, both optional: without them, or without a tracer provider set by the host,
nothing is recorded and the hot paths pay one check.
"""

from __future__ import annotations

from plait.observability.logs import fields
from plait.observability.metrics import Metrics, enable_metrics, metrics, serve_metrics
from plait.observability.tracing import tracer

__all__ = ["Metrics", "enable_metrics", "fields", "metrics", "serve_metrics", "tracer"]
