"""One delivery's way through a consumer: decode it, then run its handlers in one transaction
with its inbox record. Runs no AMQP; the loop settles the ``Outcome`` on the channel."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from django.db import connections, router, transaction
from pika.spec import BasicProperties

from outbox import tracing, wire
from outbox.consumer import inbox
from outbox.consumer.registry import ConsumerSpec, IncomingMessage
from outbox.models import InboxMessage

logger = logging.getLogger("outbox.consumer")

REASON_HANDLER_FAILED = "handler failed"
MAX_ERROR_CHARS = 2000
#: Headers RabbitMQ writes when it dead-letters; copies we republish start a fresh history.
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class Delivery:
    """One message as RabbitMQ delivered it, before decoding."""

    tag: int
    routing_key: str
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery; decides how the main thread settles it."""

    kind: Literal["processed", "duplicate", "failed", "malformed"]
    attempt: int = 1
    reason: str = ""
    error_type: str = ""
    error_message: str = ""


def decode(spec: ConsumerSpec, delivery: Delivery) -> IncomingMessage | str:
    """The message in ``delivery``, or the reason it is malformed."""
    properties = delivery.properties
    headers = dict(properties.headers or {})
    if not properties.message_id:
        return "no message_id property"
    if not properties.type:
        return "no type property (the event type)"
    try:
        payload = json.loads(delivery.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return f"body is not UTF-8 JSON: {error}"
    if not isinstance(payload, dict):
        return f"body is a JSON {type(payload).__name__}, not an object"
    if not spec.handlers_for(properties.type):
        return f"consumer {spec.name!r} has no handler for event type {properties.type!r}"
    attempts = headers.get(wire.HEADER_ATTEMPTS, 0)
    timestamp = properties.timestamp
    return IncomingMessage(
        consumer=spec.name,
        message_id=str(properties.message_id),
        event_type=str(properties.type),
        payload=payload,
        headers={
            key: value
            for key, value in headers.items()
            if not key.startswith((wire.FRAMEWORK_HEADER_PREFIX, *BROKER_DEATH_HEADERS))
        },
        routing_key=str(headers.get(wire.HEADER_ROUTING_KEY) or delivery.routing_key),
        aggregate_type=str(headers.get(wire.AGGREGATE_TYPE_HEADER) or ""),
        aggregate_id=str(headers.get(wire.AGGREGATE_ID_HEADER) or ""),
        timestamp=datetime.fromtimestamp(timestamp, UTC) if timestamp else None,
        attempt=(attempts if isinstance(attempts, int) else 0) + 1,
    )


def process(spec: ConsumerSpec, message: IncomingMessage) -> Outcome:
    """Run ``message``'s handlers once, in one transaction with its inbox record.

    Never raises: a handler's exception rolls the transaction back and becomes a "failed"
    outcome carrying the error.
    """
    try:
        # The span (a no-op without OpenTelemetry) continues the producer's trace, so spans and
        # outbox messages of the handler join it too.
        with (
            tracing.continue_trace(message.headers, name=f"{spec.name} {message.event_type}"),
            transaction.atomic(using=router.db_for_write(InboxMessage)),
        ):
            if not inbox.claim(spec.name, message.message_id, event_type=message.event_type):
                return Outcome("duplicate", message.attempt)
            for func in spec.handlers_for(message.event_type):
                func(message)
    except Exception as error:
        logger.warning(
            "%s: handler failed on %s %s (attempt %d)",
            spec.name,
            message.event_type,
            message.message_id,
            message.attempt,
            exc_info=True,
        )
        drop_broken_database_connections()
        return Outcome(
            "failed",
            message.attempt,
            reason=REASON_HANDLER_FAILED,
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error)[:MAX_ERROR_CHARS],
        )
    return Outcome("processed", message.attempt)


def drop_broken_database_connections() -> None:
    """Close database connections that are no longer usable (e.g. PostgreSQL restarted), so
    the next message opens a fresh one instead of failing the same way."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.is_usable():
            connection.close()
