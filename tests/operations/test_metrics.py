"""Prometheus metrics: the relay's hooks feed counters; gauges read the table per scrape."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from outbox.models import OutboxJob, OutboxMessage
from outbox.operations import metrics
from tests.operations.conftest import MakeMessage


def sample(name: str, registry: CollectorRegistry = REGISTRY) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_hooks_feed_counters_and_the_latency_histogram() -> None:
    assert metrics.PROMETHEUS_AVAILABLE
    before = {
        name: sample(name)
        for name in [
            "outbox_messages_published_total",
            "outbox_messages_retried_total",
            "outbox_messages_failed_total",
            "outbox_publish_latency_seconds_count",
            "outbox_publish_latency_seconds_sum",
        ]
    }

    metrics.messages_published(3)
    metrics.messages_retried(2)
    metrics.messages_failed(1)
    metrics.publish_latency(0.25)

    assert sample("outbox_messages_published_total") - before[
        "outbox_messages_published_total"
    ] == pytest.approx(3)
    assert sample("outbox_messages_retried_total") - before[
        "outbox_messages_retried_total"
    ] == pytest.approx(2)
    assert sample("outbox_messages_failed_total") - before[
        "outbox_messages_failed_total"
    ] == pytest.approx(1)
    assert sample("outbox_publish_latency_seconds_count") - before[
        "outbox_publish_latency_seconds_count"
    ] == pytest.approx(1)
    assert sample("outbox_publish_latency_seconds_sum") - before[
        "outbox_publish_latency_seconds_sum"
    ] == pytest.approx(0.25)


@pytest.mark.django_db
def test_backlog_gauges_are_read_at_scrape_time(make_message: MakeMessage) -> None:
    registry = CollectorRegistry()
    assert metrics.register_backlog_collector(registry)  # registering queries nothing

    assert sample("outbox_ready_messages", registry) == 0
    assert sample("outbox_oldest_ready_age_seconds", registry) == 0

    make_message(OutboxMessage.Status.READY, age=timedelta(minutes=2))
    make_message(OutboxMessage.Status.READY)
    make_message(OutboxMessage.Status.PUBLISHED)
    make_message(OutboxMessage.Status.FAILED)

    assert sample("outbox_ready_messages", registry) == 2
    assert sample("outbox_failed_messages", registry) == 1
    assert sample("outbox_oldest_ready_age_seconds", registry) == pytest.approx(120, abs=5)
    assert b"# TYPE outbox_ready_messages gauge" in generate_latest(registry)


@pytest.mark.django_db
def test_job_gauges_count_waiting_and_failed_jobs() -> None:
    registry = CollectorRegistry()
    metrics.register_backlog_collector(registry)
    assert sample("outbox_ready_jobs", registry) == 0
    for key, status in [("a", "ready"), ("b", "ready"), ("c", "failed")]:
        OutboxJob.objects.create(kind="handler", name="h", key=key, payload={}, status=status)
    assert sample("outbox_ready_jobs", registry) == 2
    assert sample("outbox_failed_jobs", registry) == 1
