"""Walk through the example over real HTTP: stock a product, place an order, show the outbox
row, then relay it to RabbitMQ and read it back from a queue."""

import json
import time
import urllib.error
import urllib.request
from argparse import ArgumentParser
from typing import Any

import pika
from django.core.management.base import BaseCommand, CommandError
from pika.exchange_type import ExchangeType

from example_project.shop.models import Stock
from outbox.broker import connection_parameters
from outbox.models import OutboxMessage
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
        self._relay_and_receive(message)
        self.stdout.write(self.style.SUCCESS("example finished"))

    def _relay_and_receive(self, message: OutboxMessage) -> None:
        # A demo queue bound before the relay runs: RabbitMQ drops (returns) a message no
        # queue is bound for, and the relay would retry it instead of marking it published.
        connection = pika.BlockingConnection(connection_parameters(client_name="shop-demo"))
        try:
            channel = connection.channel()
            channel.exchange_declare(
                message.exchange, exchange_type=ExchangeType("topic"), durable=True
            )
            queue = channel.queue_declare("", exclusive=True).method.queue or ""
            channel.queue_bind(queue, message.exchange, routing_key="orders.#")

            relay = Relay()
            try:
                result = relay.drain(time_budget=10)
            finally:
                relay.close()
            if result.broker_error:
                raise CommandError(f"the relay could not reach RabbitMQ: {result.broker_error}")
            message.refresh_from_db()
            if message.status != OutboxMessage.Status.PUBLISHED:
                raise CommandError(f"message {message.message_id} is still {message.status}")
            self.stdout.write(
                f"3. the relay published it, confirmed by RabbitMQ (status {message.status},"
                f" {result.published} published in this run)"
            )
            properties, body = self._receive(connection, channel, queue, str(message.message_id))
            self.stdout.write(
                f"4. queue {queue} received message_id {properties.message_id}"
                f" type {properties.type} headers {properties.headers}: {body.decode()}"
            )
        finally:
            connection.close()

    def _receive(
        self, connection: pika.BlockingConnection, channel: Any, queue: str, message_id: str
    ) -> tuple[pika.BasicProperties, bytes]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None or properties is None:
                connection.sleep(0.05)
            elif properties.message_id == message_id:
                return properties, bytes(body)
        raise CommandError(f"message {message_id} did not arrive in the demo queue")

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
