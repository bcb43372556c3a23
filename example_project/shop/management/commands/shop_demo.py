"""Walk through the example over real HTTP: stock a product, place an order, show the outbox
row, watch a running relay (scripts/example.sh starts a Celery worker with beat) publish it to
RabbitMQ twice, as after a relay crash, and let the shipping consumer create the shipment
exactly once."""

import json
import time
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
from outbox.models import InboxMessage, OutboxMessage


class Command(BaseCommand):
    help = (
        "Place an order through the running example server and follow its outbox message"
        " through a running relay (a Celery worker with beat, or outbox_relay) to the"
        " shipping consumer."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
        parser.add_argument("--sku", default="demo-mug", help="product to stock and order")
        parser.add_argument(
            "--relay-timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="longest wait for the running relay to publish the message",
        )

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

        timeout: float = options["relay_timeout"]
        self._wait_until_published(message, timeout)
        self.stdout.write(
            f"3. the relay published it, confirmed by RabbitMQ (status {message.status})"
        )
        # What a relay killed after the broker's confirm but before marking the row leaves
        # behind: the row is ready again, and the relay publishes it a second time with the
        # same message_id.
        OutboxMessage.objects.filter(pk=message.pk).update(
            status=OutboxMessage.Status.READY, published_at=None
        )
        self._wait_until_published(message, timeout)
        self.stdout.write(
            "   a relay that crashed before marking it would publish it again: set back to"
            f" ready, it was published a second time, message_id {message.message_id}"
            " both times"
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

    def _wait_until_published(self, message: OutboxMessage, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        message.refresh_from_db()
        while message.status == OutboxMessage.Status.READY and time.monotonic() < deadline:
            time.sleep(0.1)
            message.refresh_from_db()
        if message.status != OutboxMessage.Status.PUBLISHED:
            raise CommandError(
                f"message {message.message_id} is still {message.status} after {timeout:.0f}s"
                f" (last error: {message.last_error or 'none'}); is a relay running? (the"
                " Celery worker of scripts/example.sh, or manage.py outbox_relay)"
            )

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
