"""W3C trace context: publish() records the producer's span; the consumer continues it."""

from __future__ import annotations

import pytest
from django.db import transaction
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from outbox import publish, tracing

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """The global provider can be set once per process; it records into ``_EXPORTER``."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


@pytest.mark.django_db
def test_publish_stores_the_current_traceparent(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("place order") as span, transaction.atomic():
        row = publish("orders.order_placed", {"order_id": 1}, headers={"x-tenant": "a"})
        context = span.get_span_context()

    traceparent = row.headers["traceparent"]
    assert traceparent == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert row.headers["x-tenant"] == "a"


@pytest.mark.django_db
def test_no_span_means_no_trace_header_and_a_caller_header_wins() -> None:
    with transaction.atomic():
        plain = publish("orders.order_placed", {"order_id": 1})
    assert "traceparent" not in plain.headers

    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with trace.get_tracer("shop").start_as_current_span("place"), transaction.atomic():
        row = publish("orders.order_placed", {"order_id": 2}, headers={"traceparent": own})
    assert row.headers["traceparent"] == own


def test_the_consumer_span_continues_the_producer_trace(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("shop").start_as_current_span("place order"):
        headers = tracing.trace_headers()
    producer = spans.get_finished_spans()[0]
    # AMQP header values may arrive as bytes.
    amqp_headers = {"traceparent": headers["traceparent"].encode(), "x-tenant": "a"}

    with tracing.continue_trace(amqp_headers, name="consume orders.order_placed") as span:
        assert span is not None

    consumer = spans.get_finished_spans()[-1]
    assert consumer.name == "consume orders.order_placed"
    assert consumer.kind == trace.SpanKind.CONSUMER
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id


def test_without_a_traceparent_the_consumer_starts_a_new_trace(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.continue_trace({"traceparent": "garbage"}):
        pass
    (consumer,) = spans.get_finished_spans()
    assert consumer.parent is None


@pytest.mark.django_db(transaction=True)
def test_a_consumed_message_is_handled_inside_the_producers_trace(
    spans: InMemorySpanExporter,
) -> None:
    from outbox.consumer.processing import process
    from outbox.consumer.registry import ConsumerSpec, IncomingMessage, Registration

    producer_trace = "0af7651916cd43dd8448eb211c80319c"
    seen: list[int] = []

    def handle(message: IncomingMessage) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    spec = ConsumerSpec("billing", (Registration("orders.*", handle),))
    message = IncomingMessage(
        consumer="billing",
        message_id="m-traced",
        event_type="orders.order_placed",
        payload={},
        headers={"traceparent": f"00-{producer_trace}-b7ad6b7169203331-01".encode()},
    )
    assert process(spec, message).kind == "processed"
    assert [f"{trace_id:032x}" for trace_id in seen] == [producer_trace]
    [span] = [s for s in spans.get_finished_spans() if s.name == "billing orders.order_placed"]
    assert span.kind is trace.SpanKind.CONSUMER
