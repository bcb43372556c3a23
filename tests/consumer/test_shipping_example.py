"""The example's shipping consumer: one shipment per order, however often the event arrives."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pika
import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from example_project.shipping.handlers import CONSUMER
from example_project.shipping.models import Shipment
from example_project.shop.models import Stock
from outbox.common.jsontext import encode
from outbox.consumer.loop import consume
from outbox.consumer.topology import Topology, declare
from outbox.models import InboxMessage, OutboxMessage
from tests.broker import connect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shipping_queue(settings: Settings) -> Iterator[Topology]:
    settings.OUTBOX = {**settings.OUTBOX, "EXCHANGE": f"test-{uuid.uuid4().hex[:12]}"}
    topology = declare(CONSUMER)
    yield topology
    connection = connect()
    channel = connection.channel()
    channel.queue_delete(topology.queue)
    channel.queue_delete(topology.dead_letter_queue)
    for number in range(1, len(topology.retry_delays_ms) + 1):
        channel.queue_delete(topology.retry_queue(number))
    channel.exchange_delete(topology.exchange)
    connection.close()


def relay(message: OutboxMessage) -> None:
    """Publish an outbox row as the relay does (DESIGN.md, wire format)."""
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        message.exchange,
        message.routing_key,
        encode(message.payload).encode(),
        pika.BasicProperties(
            message_id=str(message.message_id),
            type=message.event_type,
            content_type="application/json",
            delivery_mode=2,
            headers={
                **message.headers,
                "aggregate_type": message.aggregate_type,
                "aggregate_id": message.aggregate_id,
            },
        ),
        mandatory=True,
    )
    connection.close()


def test_an_order_placed_twice_delivered_gets_one_shipment(
    client: Client, shipping_queue: Topology
) -> None:
    Stock.objects.create(sku="mug", available=5)
    response = client.post(
        "/orders/", json.dumps({"sku": "mug", "quantity": 2}), content_type="application/json"
    )
    order_id = response.json()["order_id"]
    message = OutboxMessage.objects.get()
    relay(message)
    relay(message)  # the relay crashed before marking it published, and sent it again

    assert consume(CONSUMER, max_messages=2, until_idle=5) == 2

    shipment = Shipment.objects.get()
    assert (str(shipment.order_id), shipment.sku, shipment.quantity) == (order_id, "mug", 2)
    assert InboxMessage.objects.get().message_id == str(message.message_id)
