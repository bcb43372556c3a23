"""W3C trace context across the outbox, when OpenTelemetry is installed.

``publish()`` stores the current ``traceparent`` (and ``tracestate``) in the row's headers,
the relay sends headers as they are, and a consumer wraps its handling in
``continue_trace(headers)`` so its span joins the producer's trace. Without the
``opentelemetry`` extra both are no-ops. The W3C propagator is used explicitly, whatever
global propagator the application configured, because the wire format promises
``traceparent``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the opentelemetry extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = [
    "OPENTELEMETRY_AVAILABLE",
    "TRACE_HEADERS",
    "continue_trace",
    "is_tracing",
    "trace_headers",
    "with_trace_headers",
]

OPENTELEMETRY_AVAILABLE = trace is not None
TRACE_HEADERS = ("traceparent", "tracestate")
TRACER_NAME = "outbox"
_PROPAGATOR = TraceContextTextMapPropagator() if trace is not None else None


def trace_headers() -> dict[str, str]:
    """The current span's ``traceparent`` / ``tracestate``, or ``{}`` when there is none."""
    if _PROPAGATOR is None:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def with_trace_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` plus the current trace context; a caller's own ``traceparent`` wins."""
    current = trace_headers()
    if not current or "traceparent" in headers:
        return headers
    return {**current, **headers}


def is_tracing(headers: Mapping[str, Any] | None) -> bool:
    """Whether ``continue_trace(headers)`` has anything to do: ``headers`` carry a
    ``traceparent`` to pass on, or a tracer provider is set (the SDK's, which records spans).

    Without either, the span it would open is OpenTelemetry's invalid no-op span, with no
    context for anything inside the block to propagate, so a caller on a hot path (the
    consumer, per message) can skip the block.
    """
    if trace is None:
        return False
    if headers and "traceparent" in headers:
        return True
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


@contextmanager
def continue_trace(
    headers: Mapping[str, Any] | None, name: str = "outbox consume"
) -> Iterator[Any]:
    """Run the block in a consumer span whose parent is the trace named in ``headers``.

    ``headers`` are the AMQP message headers (values may be ``bytes``). Without a valid
    ``traceparent`` the span starts a new trace. Yields the span, or None when OpenTelemetry
    is not installed.
    """
    if trace is None or _PROPAGATOR is None:
        yield None
        return
    carrier = {
        key: value.decode() if isinstance(value, bytes) else str(value)
        for key, value in (headers or {}).items()
        if key in TRACE_HEADERS and value is not None
    }
    parent = _PROPAGATOR.extract(carrier)
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER) as span:
        yield span
