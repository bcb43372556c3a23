"""The consumer skips its per-message tracing span when it would be OpenTelemetry's no-op:
no trace context in the message and no tracer provider to record spans."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from outbox import tracing
from outbox.consumer import processing
from outbox.consumer.registry import ConsumerSpec, IncomingMessage, Registration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def use_provider(monkeypatch: pytest.MonkeyPatch, provider: trace.TracerProvider) -> None:
    # The global provider can be set once per process; the check reads it through this.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)


def test_nothing_to_trace_without_a_provider_or_a_traceparent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_provider(monkeypatch, trace.ProxyTracerProvider())
    assert tracing.is_tracing({}) is False
    assert tracing.is_tracing(None) is False
    assert tracing.is_tracing({"x-tenant": "a", "tracestate": "k=v"}) is False
    use_provider(monkeypatch, trace.NoOpTracerProvider())
    assert tracing.is_tracing({}) is False


def test_a_traceparent_or_a_recording_provider_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    use_provider(monkeypatch, trace.ProxyTracerProvider())
    assert tracing.is_tracing({"traceparent": TRACEPARENT}) is True
    use_provider(monkeypatch, TracerProvider())
    assert tracing.is_tracing({}) is True


def test_the_handler_runs_in_a_span_only_when_there_is_something_to_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []

    def handler(message: IncomingMessage) -> None:
        seen.append(trace.get_current_span().get_span_context().is_valid)

    spec = ConsumerSpec("spans", (Registration("test.#", handler),))
    use_provider(monkeypatch, trace.ProxyTracerProvider())
    for headers in ({}, {"traceparent": TRACEPARENT}):
        message = IncomingMessage("spans", "m-1", "test.happened", {}, headers=headers)
        with processing._handler_span(spec, message):
            processing._run_handlers(spec, message)
    # Without a provider the only span worth opening is the producer's trace, continued.
    assert seen == [False, True]
