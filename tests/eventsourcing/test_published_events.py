"""Stored events published (``publish_stored_events = True``) against real PostgreSQL and
RabbitMQ: each stored event is an outbox row of the saving transaction, the relay delivers it
with the aggregate's headers, and a save that fails leaves no row (docs/event-sourcing.md)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import transaction

from domain_events import (
    ConcurrencyError,
    DomainEvent,
    DuplicateCommandError,
    EventSourcedAggregate,
    EventStore,
    EventStoreError,
    applies,
    handler,
)
from domain_events.models import StoredEvent
from domain_events.registry import HandlerRegistry
from outbox import publish
from outbox.models import OutboxMessage
from tests.broker import BoundQueue
from tests.eventsourcing.aggregates import Tally
from tests.relay.conftest import consume

store = EventStore()


@dataclass(frozen=True)
class ParcelSent(DomainEvent, event_type="tests.parcel.sent"):
    parcel_id: str
    weight_kg: Decimal


@dataclass(frozen=True)
class ParcelDelivered(DomainEvent, event_type="tests.parcel.delivered"):
    parcel_id: str
    signed_by: str


class Parcel(EventSourcedAggregate, aggregate_type="tests.parcel"):
    publish_stored_events = True

    def __init__(self, aggregate_id: Any) -> None:
        super().__init__(aggregate_id)
        self.delivered = False

    def send(self, weight_kg: Decimal) -> None:
        self.record(ParcelSent(parcel_id=self.id, weight_kg=weight_kg))

    def deliver(self, signed_by: str) -> None:
        self.record(ParcelDelivered(parcel_id=self.id, signed_by=signed_by))

    @applies(ParcelSent)
    def _sent(self, event: ParcelSent) -> None:
        self.delivered = False

    @applies(ParcelDelivered)
    def _delivered(self, event: ParcelDelivered) -> None:
        self.delivered = True


@pytest.fixture
def exchange(rabbit_queue: BoundQueue, settings: Any) -> BoundQueue:
    """The test's private exchange on the real RabbitMQ, made the outbox's default."""
    settings.OUTBOX = {**settings.OUTBOX, "EXCHANGE": rabbit_queue.exchange}
    return rabbit_queue


def sent_parcel() -> Parcel:
    parcel = Parcel(f"p-{uuid4()}")
    parcel.send(Decimal("1.50"))
    with transaction.atomic():
        store.save(parcel)
    return parcel


@pytest.mark.django_db(transaction=True)
def test_stored_events_reach_rabbitmq_with_the_aggregate_headers(exchange: BoundQueue) -> None:
    parcel = sent_parcel()
    parcel.deliver("ann")
    parcel.deliver("bob")  # two events of one save: two rows of one INSERT
    with transaction.atomic():
        store.save(parcel, metadata={"correlation_id": "c-1"})

    call_command("outbox_relay", "--once")
    received = consume(exchange, 3)

    stored = list(
        StoredEvent.objects.filter(aggregate_id=parcel.id)
        .order_by("version")
        .values_list("version", "event_type", "event_id", "occurred_at")
    )
    assert [m.routing_key for m in received] == [event_type for _, event_type, _, _ in stored]
    assert [m.properties.type for m in received] == [
        "tests.parcel.sent",
        "tests.parcel.delivered",
        "tests.parcel.delivered",
    ]
    assert [json.loads(m.body) for m in received] == [
        {"parcel_id": parcel.id, "weight_kg": "1.50"},
        {"parcel_id": parcel.id, "signed_by": "ann"},
        {"parcel_id": parcel.id, "signed_by": "bob"},
    ]
    positions = dict(
        OutboxMessage.objects.filter(aggregate_id=parcel.id).values_list("message_id", "position")
    )
    for message, (version, _, event_id, occurred_at) in zip(received, stored, strict=True):
        assert message.properties.headers == {
            "aggregate_type": "tests.parcel",
            "aggregate_id": parcel.id,
            "aggregate_version": version,
            "event_id": str(event_id),
            "schema_version": 1,
            "occurred_at": occurred_at.isoformat(),
            "x-outbox-position": positions[uuid.UUID(str(message.properties.message_id))],
        }
        assert message.properties.content_type == "application/json"
        assert message.properties.delivery_mode == 2
    rows = OutboxMessage.objects.filter(aggregate_id=parcel.id)
    assert {row.ordering_key for row in rows} == {f"tests.parcel:{parcel.id}"}
    assert {row.status for row in rows} == {OutboxMessage.Status.PUBLISHED}


@pytest.mark.django_db
def test_a_save_that_fails_on_concurrency_or_a_duplicate_writes_no_outbox_row() -> None:
    parcel = sent_parcel()
    stale = store.get(Parcel, parcel.id)
    parcel.deliver("ann")
    store.save(parcel)
    assert OutboxMessage.objects.filter(aggregate_id=parcel.id).count() == 2

    stale.deliver("mallory")
    with pytest.raises(ConcurrencyError):
        store.save(stale)

    assert OutboxMessage.objects.filter(aggregate_id=parcel.id).count() == 2
    assert not OutboxMessage.objects.filter(payload__signed_by="mallory").exists()
    assert StoredEvent.objects.filter(aggregate_id=parcel.id).count() == 2

    # A re-delivered command is refused the same way: no second row for it.
    first = store.get(Parcel, parcel.id)
    first.deliver("ann again")
    store.save(first, triggering_message_id="m-1")
    again = store.get(Parcel, parcel.id)
    again.deliver("ann again")
    with pytest.raises(DuplicateCommandError):
        store.save(again, triggering_message_id="m-1")
    assert OutboxMessage.objects.filter(payload__signed_by="ann again").count() == 1


@pytest.mark.django_db
def test_a_failing_handler_rolls_the_rows_back_and_handler_rows_come_after(
    handlers: HandlerRegistry,
) -> None:
    @handler(ParcelDelivered)
    def tell_the_sender(event: ParcelDelivered) -> None:
        if event.signed_by == "nobody":
            raise RuntimeError("no signature")
        publish("shipping.parcel_signed", {"parcel_id": event.parcel_id})

    parcel = sent_parcel()
    parcel.deliver("nobody")
    with pytest.raises(RuntimeError, match="no signature"):
        store.save(parcel)
    assert list(OutboxMessage.objects.filter(aggregate_id=parcel.id).values_list("event_type")) == [
        ("tests.parcel.sent",)
    ]

    fresh = store.get(Parcel, parcel.id)
    fresh.deliver("ann")
    store.save(fresh)
    assert list(
        OutboxMessage.objects.filter(event_type__startswith="tests.parcel.")
        .filter(aggregate_id=parcel.id)
        .order_by("id")
        .values_list("event_type", "headers__aggregate_version")
    ) == [("tests.parcel.sent", 1), ("tests.parcel.delivered", 2)]
    assert OutboxMessage.objects.filter(event_type="shipping.parcel_signed").count() == 1
    assert (
        OutboxMessage.objects.get(event_type="shipping.parcel_signed").id
        > OutboxMessage.objects.get(event_type="tests.parcel.delivered").id
    )


@pytest.mark.django_db
def test_aggregates_publish_only_when_they_opt_in(settings: Any) -> None:
    tally = Tally.start(str(uuid4()), "quiet", uuid4())
    store.save(tally)
    assert not OutboxMessage.objects.exists()

    with pytest.raises(TypeError, match="publish_stored_events must be True or False"):

        class Unsure(EventSourcedAggregate, aggregate_type="tests.unsure"):
            publish_stored_events = "yes"  # type: ignore[assignment]

    # The outbox routed to another database than the store's: refused before any write.
    settings.DATABASE_ROUTERS = ["tests.eventsourcing.test_published_events.OutboxElsewhere"]
    parcel = Parcel(f"p-{uuid4()}")
    parcel.send(Decimal(1))
    with pytest.raises(EventStoreError, match="the outbox is in database 'other'"):
        store.save(parcel)
    settings.DATABASE_ROUTERS = []
    assert not StoredEvent.objects.filter(aggregate_id=parcel.id).exists()


class OutboxElsewhere:
    """A router that puts the outbox in another database."""

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        return "other" if model is OutboxMessage else None
