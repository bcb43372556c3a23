"""Walk through the example over real HTTP: stock a product, place an order, show the outbox."""

import json
import urllib.error
import urllib.request
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from example_project.shop.models import Stock
from outbox.models import OutboxMessage


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
