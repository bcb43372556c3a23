"""Counters and timings the relay reports (consumers report none yet).

The relay calls these functions at the points they describe; where metrics are
collected is decided here only. With ``prometheus_client`` installed (the ``prometheus``
extra) they feed these series in its default registry:

- ``outbox_messages_published_total``, ``outbox_messages_retried_total``,
  ``outbox_messages_failed_total`` (counters)
- ``outbox_publish_latency_seconds`` (histogram: row creation to broker confirm)
- ``outbox_ready_messages``, ``outbox_failed_messages`` and
  ``outbox_oldest_ready_age_seconds`` (gauges read from the database at scrape time by a
  collector; see ``register_backlog_collector``)

Without it every function is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the prometheus extra is not installed
    prometheus_client = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from outbox.operations import stats

__all__ = [
    "PROMETHEUS_AVAILABLE",
    "messages_failed",
    "messages_published",
    "messages_retried",
    "publish_latency",
    "register_backlog_collector",
]

PROMETHEUS_AVAILABLE = prometheus_client is not None
# From a loopback confirm (milliseconds) to a backlog drained after an outage (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

if prometheus_client is not None:
    _PUBLISHED = prometheus_client.Counter(
        "outbox_messages_published", "Messages confirmed by the broker and marked published"
    )
    _RETRIED = prometheus_client.Counter(
        "outbox_messages_retried", "Messages scheduled for another attempt after a failure"
    )
    _FAILED = prometheus_client.Counter(
        "outbox_messages_failed", "Messages that used up their attempts and were marked failed"
    )
    _LATENCY = prometheus_client.Histogram(
        "outbox_publish_latency_seconds",
        "Seconds from an outbox row's creation to the broker's confirm",
        buckets=LATENCY_BUCKETS,
    )


def messages_published(count: int) -> None:
    """``count`` messages were confirmed by the broker and marked published."""
    if prometheus_client is not None:
        _PUBLISHED.inc(count)


def messages_retried(count: int) -> None:
    """``count`` messages were not confirmed and were scheduled for another attempt."""
    if prometheus_client is not None:
        _RETRIED.inc(count)


def messages_failed(count: int) -> None:
    """``count`` messages used up their attempts and were marked failed."""
    if prometheus_client is not None:
        _FAILED.inc(count)


def publish_latency(seconds: float) -> None:
    """One message took ``seconds`` from its row's creation to the broker's confirm."""
    if prometheus_client is not None:
        _LATENCY.observe(seconds)


def register_backlog_collector(registry: CollectorRegistry | None = None) -> bool:
    """Expose the ready depth and the oldest ready age, read from the database per scrape.

    Call it once in the process that serves ``/metrics`` (one process is enough: the figures
    are the table's, not the process's). Returns False when ``prometheus_client`` is missing.
    """
    if prometheus_client is None:
        return False
    (registry or prometheus_client.REGISTRY).register(_BacklogCollector())
    return True


if prometheus_client is not None:

    class _BacklogCollector(Collector):
        def describe(self) -> Iterable[Any]:
            # Names only: registering must not query the database.
            return self._families()

        def collect(self) -> Iterable[Any]:
            # Imported here: this module loads before the apps (the relay imports it early).
            from outbox.operations import stats

            return self._families(stats.backlog())

        @staticmethod
        def _families(backlog: stats.Backlog | None = None) -> list[GaugeMetricFamily]:
            ready = GaugeMetricFamily(
                "outbox_ready_messages", "Outbox rows waiting to be published"
            )
            failed = GaugeMetricFamily(
                "outbox_failed_messages", "Outbox rows marked failed (an operator must act)"
            )
            age = GaugeMetricFamily(
                "outbox_oldest_ready_age_seconds",
                "Age of the oldest ready outbox row in seconds (0 when none is waiting)",
            )
            if backlog is not None:
                ready.add_metric([], backlog.ready)
                failed.add_metric([], backlog.failed)
                age.add_metric([], backlog.oldest_ready_age_seconds or 0.0)
            return [ready, failed, age]
