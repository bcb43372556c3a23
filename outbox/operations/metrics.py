"""Counters and timings the relay and the consumers report.

The relay and the consume loop call these functions at the points they describe; where
metrics are collected is decided here only. With ``prometheus_client`` installed (the
``prometheus`` extra) they feed these series in its default registry:

- ``outbox_messages_published_total``, ``outbox_messages_retried_total``,
  ``outbox_messages_failed_total`` (counters)
- ``outbox_publish_latency_seconds`` (histogram: row creation to broker confirm)
- ``outbox_ready_messages``, ``outbox_failed_messages``,
  ``outbox_oldest_ready_age_seconds``, ``outbox_ready_jobs``, ``outbox_failed_jobs`` and
  ``outbox_wal_slot_retained_bytes`` (gauges read from the database at scrape time by a
  collector; see ``register_backlog_collector``)
- consumers, labelled ``consumer``: ``outbox_consumer_messages_processed_total``,
  ``outbox_consumer_duplicates_skipped_total``, ``outbox_consumer_messages_retried_total``,
  ``outbox_consumer_messages_dead_lettered_total`` (counters) and
  ``outbox_consumer_handler_seconds`` (histogram: one message's handlers, committed or not)

Without it every function is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the prometheus extra is not installed
    prometheus_client = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from outbox.operations import stats, wal_status

__all__ = [
    "PROMETHEUS_AVAILABLE",
    "consumer_dead_lettered",
    "consumer_duplicates",
    "consumer_handler_time",
    "consumer_processed",
    "consumer_retried",
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
    """Expose the ready and failed depths of the outbox and of the local jobs, and the oldest
    ready row's age, read from the database per scrape.

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
            from outbox.operations import stats, wal_status

            slot = wal_status.slot_status()
            return self._families(
                stats.backlog(), stats.job_backlog(), slot if slot and slot.exists else None
            )

        @staticmethod
        def _families(
            backlog: stats.Backlog | None = None,
            jobs: stats.JobBacklog | None = None,
            slot: wal_status.WalSlotStatus | None = None,
        ) -> list[GaugeMetricFamily]:
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
            ready_jobs = GaugeMetricFamily(
                "outbox_ready_jobs",
                "Local jobs (durable after-commit handlers) waiting to run or to be retried",
            )
            failed_jobs = GaugeMetricFamily(
                "outbox_failed_jobs", "Local jobs that used up their runs (an operator must act)"
            )
            if backlog is not None:
                ready.add_metric([], backlog.ready)
                failed.add_metric([], backlog.failed)
                age.add_metric([], backlog.oldest_ready_age_seconds or 0.0)
            retained = GaugeMetricFamily(
                "outbox_wal_slot_retained_bytes",
                "WAL PostgreSQL keeps for the WAL relay's replication slot, in bytes (no sample"
                " without the slot): a slot nobody reads fills the disk",
                labels=["slot"],
            )
            if jobs is not None:
                ready_jobs.add_metric([], jobs.ready)
                failed_jobs.add_metric([], jobs.failed)
            if slot is not None:
                retained.add_metric([slot.slot_name], slot.retained_bytes or 0)
            return [ready, failed, age, ready_jobs, failed_jobs, retained]


# --- consumers ---
# From a one-row INSERT (a fraction of a millisecond) to a handler calling a slow service.
HANDLER_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)

if prometheus_client is not None:
    _CONSUMER_PROCESSED = prometheus_client.Counter(
        "outbox_consumer_messages_processed",
        "Messages whose handlers committed with their inbox record",
        ["consumer"],
    )
    _CONSUMER_DUPLICATES = prometheus_client.Counter(
        "outbox_consumer_duplicates_skipped",
        "Deliveries skipped because the inbox already recorded their message id",
        ["consumer"],
    )
    _CONSUMER_RETRIED = prometheus_client.Counter(
        "outbox_consumer_messages_retried",
        "Failed messages sent to a retry queue for another attempt",
        ["consumer"],
    )
    _CONSUMER_DEAD_LETTERED = prometheus_client.Counter(
        "outbox_consumer_messages_dead_lettered",
        "Messages sent to the dead-letter queue (failed their last attempt, or malformed)",
        ["consumer"],
    )
    _CONSUMER_HANDLER_TIME = prometheus_client.Histogram(
        "outbox_consumer_handler_seconds",
        "Seconds one message's handlers ran, whether they committed or failed",
        ["consumer"],
        buckets=HANDLER_BUCKETS,
    )


def consumer_processed(consumer: str, count: int) -> None:
    """``count`` messages of ``consumer`` committed and were acknowledged."""
    if prometheus_client is not None and count:
        _CONSUMER_PROCESSED.labels(consumer).inc(count)


def consumer_duplicates(consumer: str, count: int) -> None:
    """``count`` deliveries of ``consumer`` were already in its inbox and were skipped."""
    if prometheus_client is not None and count:
        _CONSUMER_DUPLICATES.labels(consumer).inc(count)


def consumer_retried(consumer: str) -> None:
    """A failed message of ``consumer`` went to a retry queue."""
    if prometheus_client is not None:
        _CONSUMER_RETRIED.labels(consumer).inc()


def consumer_dead_lettered(consumer: str) -> None:
    """A message of ``consumer`` went to its dead-letter queue."""
    if prometheus_client is not None:
        _CONSUMER_DEAD_LETTERED.labels(consumer).inc()


def consumer_handler_time(consumer: str, seconds: Sequence[float]) -> None:
    """The handlers of ``consumer`` ran for each of ``seconds`` (one value per message)."""
    if prometheus_client is not None and seconds:
        histogram = _CONSUMER_HANDLER_TIME.labels(consumer)
        for value in seconds:
            histogram.observe(value)
