"""The AMQP message of an outbox row: one builder for every relay source, so that the polling
relay and the WAL relay put the same bytes on the wire (../shared/DESIGN.md, "Wire format")."""

from __future__ import annotations

from outbox import wire
from outbox.relay.publishers import OutgoingMessage
from outbox.relay.store import ClaimedMessage

__all__ = ["outgoing_message"]


def outgoing_message(message: ClaimedMessage) -> OutgoingMessage:
    """What the publisher sends for the row ``message`` (keyed by the row's id)."""
    headers = wire.message_headers(
        message.headers, message.aggregate_type, message.aggregate_id, message.position
    )
    return OutgoingMessage(
        key=message.id,
        message_id=str(message.message_id),
        exchange=message.exchange,
        routing_key=message.routing_key,
        event_type=message.event_type,
        body=message.payload_json.encode(),
        headers=headers,
        timestamp=int(message.created_at.timestamp()),
    )
