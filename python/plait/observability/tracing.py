"""OpenTelemetry spans of plait, and the W3C trace context that persists with an execution.

plait asks the host's global tracer provider for its tracer. Until the host sets a real one
(an SDK's), `tracer()` is None and the engine records nothing: the cost is that one check.

The trace context of an execution's start persists inside its stored JSON payload, as the
first key `"~plait/trace"` holding a W3C `traceparent` (its own leading `00-` is the format's
version). A payload that is not a JSON object (an array, a scalar, `null`) is wrapped instead:
`{"~plait/traced": traceparent, "~plait/value": payload}`. Rows stored without either decode as
before; `split_trace` gives back the payload as it was before the payload model sees it. Entity
requests carry it the same way, so a handler on another runner continues the caller's trace.

Sampling is decided where a trace starts (the host's span, an execution's start, an entity
request sent outside any span, a commit batch): a span whose parent is not sampled is not
handed to the SDK (ParentBased's rule, the SDK's default sampler), so an unsampled execution
costs one span, not one per step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the optional dependency is absent: no tracing
    trace = None  # type: ignore[assignment]

from plait._native import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "TRACE_KEY",
    "context_of",
    "current_context",
    "sampled",
    "split_trace",
    "traceparent_of",
    "tracer",
    "with_trace",
]

TRACE_KEY = "~plait/trace"
_PREFIX = b'{"' + TRACE_KEY.encode() + b'":"'
# A payload that is not a JSON object, with a traceparent: its own key names the wrapping, so
# an object whose first key is `~plait/value` is never mistaken for one.
WRAPPED_KEY = "~plait/traced"
VALUE_KEY = "~plait/value"
_WRAPPED = b'{"' + WRAPPED_KEY.encode() + b'":"'
_VALUE = b',"' + VALUE_KEY.encode() + b'":'

_KINDS = (
    {
        "internal": trace.SpanKind.INTERNAL,
        "client": trace.SpanKind.CLIENT,
        "server": trace.SpanKind.SERVER,
        "producer": trace.SpanKind.PRODUCER,
    }
    if trace is not None
    else {}
)

_tracer: Tracer | None = None
# A provider named by the environment is loaded by the API on first use, not set beforehand.
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_GLOBAL_READABLE = trace is not None and hasattr(trace, "_TRACER_PROVIDER")
_propagator: Any = None


def tracer() -> Tracer | None:
    """The tracer of plait, or None while the host has set no real tracer provider.

    A provider set once stays (OpenTelemetry refuses a second), so the tracer is kept.
    """
    global _tracer, _propagator
    if _tracer is not None:
        return _tracer
    if trace is None:
        return None
    # The API's `get_tracer_provider` reads os.environ on every call while no provider is set:
    # its global is read directly instead, which is the whole cost of a span site then.
    if _GLOBAL_READABLE and trace._TRACER_PROVIDER is None and not _PROVIDER_FROM_ENV:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    _propagator = TraceContextTextMapPropagator()
    _tracer = provider.get_tracer("plait", __version__)
    return _tracer


def current_context() -> Context | None:
    """The host's current context when tracing, else None."""
    if tracer() is None:
        return None
    return otel_context.get_current()


def empty_context() -> Context:
    """A context with no span: a span started in it is a root."""
    return otel_context.Context()


def traceparent_of(ctx: Context | None = None) -> str | None:
    """The W3C `traceparent` of the span current in `ctx` (or now); None without a valid one."""
    if tracer() is None:
        return None
    span = trace.get_current_span(ctx).get_span_context()
    if not span.is_valid:
        return None
    # The propagator's inject builds a carrier and the tracestate header too: only this is kept.
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"


def context_of(traceparent: str | None) -> Context | None:
    """A context whose remote parent span is `traceparent`'s; None without one."""
    if traceparent is None or tracer() is None:
        return None
    ctx: Context = _propagator.extract({"traceparent": traceparent}, context=otel_context.Context())
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def with_trace(payload: bytes, traceparent: str | None) -> bytes:
    """`payload` (JSON) carrying `traceparent`.

    As its first key if it is a JSON object, else wrapped with it:
    `{"~plait/traced": traceparent, "~plait/value": payload}`.
    """
    if traceparent is None:
        return payload
    if not payload.startswith(b"{"):
        return _WRAPPED + traceparent.encode() + b'"' + _VALUE + payload + b"}"
    head = _PREFIX + traceparent.encode() + b'"'
    rest = payload[1:].lstrip()
    return head + (b"" if rest.startswith(b"}") else b",") + rest


def split_trace(payload: bytes) -> tuple[bytes, str | None]:
    """`payload` as it was before `with_trace`, and the traceparent it carried (or None).

    One prefix check for a payload stored without one.
    """
    if not payload.startswith(b'{"~plait/trace'):
        return payload, None
    if payload.startswith(_PREFIX):
        end = payload.find(b'"', len(_PREFIX))
        if end < 0:
            return payload, None
        traceparent = payload[len(_PREFIX) : end].decode("ascii", "replace")
        rest = payload[end + 1 :]
        if rest.startswith(b","):
            return b"{" + rest[1:], traceparent
        return b"{" + rest, traceparent
    if payload.startswith(_WRAPPED):
        end = payload.find(b'"', len(_WRAPPED))
        if end < 0 or not payload.startswith(_VALUE, end + 1) or not payload.endswith(b"}"):
            return payload, None
        traceparent = payload[len(_WRAPPED) : end].decode("ascii", "replace")
        return payload[end + 1 + len(_VALUE) : -1], traceparent
    return payload, None


def start_span(
    name: str,
    attributes: dict[str, Any],
    *,
    parent: Context | None = None,
    kind: Literal["internal", "client", "server", "producer"] = "internal",
    link_to: Context | None = None,
) -> Span | None:
    """A started span of plait's tracer (None when not tracing); the caller ends it.

    `link_to`: a context whose span the new one links to (another trace it relates to).
    """
    t = tracer()
    if t is None:
        return None
    above = trace.get_current_span(parent).get_span_context()
    if above.is_valid and not above.trace_flags.sampled:
        # The sampler decided where the trace began: a child of a span not sampled is not
        # sampled either (ParentBased, the SDK's default), so the SDK is not asked, and the
        # caller's spans, attributes and context switches are skipped on `sampled`'s word.
        # A span of its own stands in, so that ending it leaves the parent alone.
        return trace.NonRecordingSpan(above)
    links = None
    if link_to is not None:
        links = [trace.Link(trace.get_current_span(link_to).get_span_context())]
    return t.start_span(name, context=parent, kind=_KINDS[kind], attributes=attributes, links=links)


def sampled(span: Span) -> bool:
    """Whether `span` is sampled: whether spans started under it are."""
    return bool(span.get_span_context().trace_flags.sampled)


def context_with(span: Span) -> Context:
    """A context in which `span` is current (a parent for spans started elsewhere)."""
    return trace.set_span_in_context(span)


def end_span(span: Span, outcome: str, error: BaseException | None = None) -> None:
    """Ends `span` with `plait.outcome`, recording `error` as an error status."""
    span.set_attribute("plait.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.StatusCode.ERROR, type(error).__name__)
    span.end()


def activate(span: Span) -> object:
    """Makes `span` current in this context; returns the token for `deactivate`."""
    return otel_context.attach(trace.set_span_in_context(span))


def deactivate(token: object) -> None:
    """Undoes `activate`."""
    otel_context.detach(token)  # type: ignore[arg-type]


def span_ids() -> tuple[str, str] | None:
    """The current span's trace id and span id (hex) for log records; None without one."""
    if tracer() is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
