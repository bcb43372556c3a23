"""Stored events published: the outbox messages of an aggregate that sets
``publish_stored_events = True``.

Each stored event becomes one outbox row, written by the same save in the same transaction
(one INSERT for all of them), so the message exists exactly when the event does. Routing key
and AMQP ``type``: the event type; payload: the event's stored data; headers: aggregate type
and id (the ordering key, so one aggregate's events reach the broker in version order), and
``aggregate_version``, ``event_id``, ``schema_version`` and ``occurred_at``.
"""

from __future__ import annotations

from domain_events.events import DomainEvent
from domain_events.eventsourcing.aggregate import EventSourcedAggregate
from domain_events.eventsourcing.exceptions import EventStoreError
from domain_events.eventsourcing.serialization import event_data
from domain_events.eventsourcing.upcasting import current_schema_version
from outbox.common.database import outbox_alias
from outbox.writer import Message

VERSION_HEADER = "aggregate_version"
EVENT_ID_HEADER = "event_id"
SCHEMA_VERSION_HEADER = "schema_version"
OCCURRED_AT_HEADER = "occurred_at"


def stored_event_messages(
    aggregate: EventSourcedAggregate, events: list[DomainEvent], *, first_version: int
) -> list[Message]:
    """One outbox ``Message`` per event, the first at ``first_version``."""
    aggregate_type = type(aggregate).aggregate_type
    return [
        Message(
            event_type=event.event_type,
            payload=event_data(event),
            aggregate_type=aggregate_type,
            aggregate_id=aggregate.id,
            headers={
                VERSION_HEADER: version,
                EVENT_ID_HEADER: str(event.event_id),
                SCHEMA_VERSION_HEADER: current_schema_version(event.event_type),
                OCCURRED_AT_HEADER: event.occurred_at.isoformat(),
            },
        )
        for version, event in enumerate(events, first_version)
    ]


def require_shared_database(aggregate: EventSourcedAggregate, store_alias: str) -> None:
    """Refuse to publish when the outbox's database alias is not the store's: the rows would
    then be written on another connection, in another transaction than the events."""
    alias = outbox_alias()
    if alias != store_alias:
        raise EventStoreError(
            f"{type(aggregate).__qualname__} publishes its stored events, but the outbox is in"
            f" database {alias!r} and the event store in {store_alias!r}: both must be one"
            " database, so the messages commit with the events"
        )
