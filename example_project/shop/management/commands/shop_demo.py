"""Walk through the example over real HTTP: stock a product, place an order, show the outbox
row, relay it to RabbitMQ (twice, as after a relay crash), and let the shipping consumer
create the shipment exactly once."""

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
from outbox.consumer.loop import consume
from outbox.consumer.topology import declare
from outbox.models import InboxMessage, OutboxMessage
from outbox.relay import Relay


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

        # The shipping queue must exist before the event is published: RabbitMQ returns a
        # message that no queue is bound for, and the relay would retry it.
        declare(SHIPPING)
        published = self._relay()
        message.refresh_from_db()
        if message.status != OutboxMessage.Status.PUBLISHED:
            raise CommandError(f"message {message.message_id} is still {message.status}")
        self.stdout.write(
            f"3. the relay published it, confirmed by RabbitMQ (status {message.status};"
            f" {published} published in this run)"
        )
        # What a relay killed after the broker's confirm but before marking the row leaves
        # behind: the row is ready again and is published a second time, same message_id.
        OutboxMessage.objects.filter(pk=message.pk).update(
            status=OutboxMessage.Status.READY, published_at=None
        )
        self._relay()
        self.stdout.write(
            f"   a relay that crashed before marking it would publish it again: sent twice,"
            f" message_id {message.message_id} both times"
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

    def _relay(self) -> int:
        relay = Relay()
        try:
            result = relay.drain(time_budget=10)
        finally:
            relay.close()
        if result.broker_error:
            raise CommandError(f"the relay could not reach RabbitMQ: {result.broker_error}")
        return result.published

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
