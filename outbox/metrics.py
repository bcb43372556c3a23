"""Counters and timings the relay and consumers report.

The relay and consumers call these functions at the points they describe; where metrics are
collected (Prometheus, when installed) is decided here only.
"""

from __future__ import annotations


def messages_published(count: int) -> None:
    """``count`` messages were confirmed by the broker and marked published."""


def messages_retried(count: int) -> None:
    """``count`` messages were not confirmed and were scheduled for another attempt."""


def messages_failed(count: int) -> None:
    """``count`` messages used up their attempts and were marked failed."""


def publish_latency(seconds: float) -> None:
    """One message took ``seconds`` from its row's creation to the broker's confirm."""
