"""Copies of a delivery sent to a consumer's retry and dead-letter queues."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from outbox import wire
from outbox.consumer.fields import sendable_headers
from outbox.consumer.processing import BROKER_DEATH_HEADERS, Delivery, Outcome


def retry_headers(outcome: Outcome) -> dict[str, Any]:
    """Headers a failed message carries to its retry queue."""
    return {
        wire.HEADER_ATTEMPTS: outcome.attempt,
        wire.HEADER_ERROR_TYPE: outcome.error_type,
        wire.HEADER_ERROR_MESSAGE: outcome.error_message,
    }


def dead_letter_headers(outcome: Outcome) -> dict[str, Any]:
    """Headers a message carries to the dead-letter queue: why, when, and the last error."""
    headers: dict[str, Any] = {
        wire.HEADER_REASON: outcome.reason,
        wire.HEADER_DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
    }
    if outcome.kind == "failed":
        headers.update(retry_headers(outcome))
    elif outcome.error_type:  # the consumer's last-resort guard caught an exception
        headers[wire.HEADER_ERROR_TYPE] = outcome.error_type
        headers[wire.HEADER_ERROR_MESSAGE] = outcome.error_message
    return headers


def republish(
    channel: BlockingChannel,
    queue: str,
    delivery: Delivery,
    *,
    consumer: str,
    extra: dict[str, Any],
) -> None:
    """Send a copy of ``delivery`` to ``queue`` with ``extra`` headers, persistent, and wait
    for the broker's confirm (the channel is in confirm mode).

    The original's headers go along, except those pika cannot encode or that would not fit in
    one frame: see ``outbox.consumer.fields.sendable_headers``.
    """
    original = delivery.properties
    headers = {
        key: value
        for key, value in (original.headers or {}).items()
        # A key pika could not decode as UTF-8 arrives as bytes; it is not one of these.
        if not (isinstance(key, str) and key.startswith(BROKER_DEATH_HEADERS))
    }
    headers.setdefault(wire.HEADER_ROUTING_KEY, delivery.routing_key)
    headers[wire.HEADER_CONSUMER] = consumer
    headers.update(extra)
    properties = BasicProperties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=sendable_headers(headers),
        delivery_mode=wire.PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
    # mandatory: a missing queue raises UnroutableError instead of dropping the copy; the
    # loop then reconnects, which declares the queues again.
    channel.basic_publish("", queue, delivery.body, properties, mandatory=True)
