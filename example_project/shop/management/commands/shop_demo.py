"""Walk through the example over real HTTP: stock a product, place an order, show the outbox
row, get it to RabbitMQ, and let the shipping consumer create the shipment exactly once."""

import json
import urllib.error
import urllib.request
import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from example_project.shipping.handlers import CONSUMER as SHIPPING
from example_project.shipping.models import Shipment
from example_project.shop.models import Stock
from outbox.broker import connection_parameters
from outbox.consumer import consume, declare
from outbox.models import InboxMessage, OutboxMessage
from outbox.serialization import encode


class Command(BaseCommand):
    help = "Place an order through the running example server and show its outbox message."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
        parser.add_argument("--sku", default="demo-mug")

    def handle(self, *args: Any, **options: Any) -> None:
        base_url: str = options["url"].rstrip("/")
        sku: str = options["sku"]
        Stock.objects.update_or_create(sku=sku, defaults={"available": 100})

        order = self._post(f"{base_url}/orders/", {"sku": sku, "quantity": 2})
        order_id = order["order_id"]
        self.stdout.write(f"1. POST /orders/ placed order {order_id}")

        message = OutboxMessage.objects.filter(aggregate_id=order_id).first()
        if message is None:
            raise CommandError(f"no outbox message was written for order {order_id}")
        self.stdout.write(
            f"2. the same transaction wrote outbox message {message.message_id}"
            f" ({message.event_type}, status {message.status})"
        )

        # The shipping queue must exist before the event is published: RabbitMQ drops a
        # message that no queue is bound for.
        declare(SHIPPING)
        # TODO(lead): replace with the relay step when merged (the relay publishes the row).
        _publish_like_the_relay(message, times=2)
        self.stdout.write(
            f"3. (stand-in for the relay) published message {message.message_id} twice,"
            " as a relay that crashed before marking it published would"
        )

        settled = consume(SHIPPING, until_idle=2)
        shipments = Shipment.objects.filter(order_id=uuid.UUID(order_id))
        shipment = shipments.first()
        if shipment is None:
            raise CommandError(f"the shipping consumer created no shipment for order {order_id}")
        processed = InboxMessage.objects.filter(
            consumer=SHIPPING, message_id=str(message.message_id)
        ).count()
        self.stdout.write(
            f"4. the shipping consumer received it and created shipment {shipment.pk}"
            f" ({shipment.quantity} x {shipment.sku}); {settled} deliveries settled,"
            f" {shipments.count()} shipment, {processed} inbox record"
        )
        if shipments.count() != 1 or processed != 1:
            raise CommandError("the message was not processed exactly once")
        self.stdout.write(self.style.SUCCESS("example finished"))

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            raise CommandError(f"POST {url} failed: {error.code} {error.read()!r}") from error
        return result


def _publish_like_the_relay(message: OutboxMessage, *, times: int) -> None:
    """Publish ``message`` in the wire format of docs/DESIGN (what the relay sends)."""
    import pika

    properties = pika.BasicProperties(
        message_id=str(message.message_id),
        type=message.event_type,
        content_type="application/json",
        delivery_mode=2,
        timestamp=int(message.created_at.timestamp()),
        headers={
            **message.headers,
            "aggregate_type": message.aggregate_type,
            "aggregate_id": message.aggregate_id,
        },
    )
    connection = pika.BlockingConnection(connection_parameters(client_name="shop_demo"))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(times):
            channel.basic_publish(
                message.exchange,
                message.routing_key,
                encode(message.payload).encode(),
                properties,
                mandatory=True,
            )
    finally:
        connection.close()
