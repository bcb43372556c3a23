"""Real-RabbitMQ helpers for tests: a private exchange and queue per test, and a way to stop
the broker that always starts it again."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(BROKER_URL))


@dataclass
class Received:
    body: bytes
    properties: pika.BasicProperties
    routing_key: str


@dataclass
class BoundQueue:
    """An exclusive queue bound to ``exchange`` with ``binding_key``; read with ``get``."""

    exchange: str
    name: str
    connection: pika.BlockingConnection
    channel: BlockingChannel
    received: list[Received] = field(default_factory=list)

    def get(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` messages in all have arrived (or ``timeout``) and return them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            if not self._read_one():
                self.connection.sleep(0.02)
        return list(self.received)

    def drain(self, quiet_seconds: float = 0.5) -> list[Received]:
        """Read until nothing arrives for ``quiet_seconds``; return everything received."""
        quiet_until = time.monotonic() + quiet_seconds
        while time.monotonic() < quiet_until:
            if self._read_one():
                quiet_until = time.monotonic() + quiet_seconds
            else:
                self.connection.sleep(0.02)
        return list(self.received)

    def _read_one(self) -> bool:
        method, properties, body = self.channel.basic_get(self.name, auto_ack=True)
        if method is None or properties is None:
            return False
        raw = body.encode() if isinstance(body, str) else bytes(body or b"")
        self.received.append(Received(raw, properties, method.routing_key or ""))
        return True


@contextmanager
def bound_queue(exchange: str | None = None, binding_key: str = "#") -> Iterator[BoundQueue]:
    """A fresh topic exchange (unless one is named) and an exclusive queue bound to it."""
    exchange = exchange or f"test-{uuid.uuid4().hex[:12]}"
    connection = connect()
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type=ExchangeType("topic"), durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue or ""
        channel.queue_bind(queue, exchange, routing_key=binding_key)
        yield BoundQueue(exchange, queue, connection, channel)
    finally:
        if connection.is_open:
            try:
                connection.channel().exchange_delete(exchange)
            finally:
                connection.close()


def rabbitmq_is_up() -> bool:
    try:
        connect().close()
    except pika.exceptions.AMQPError:
        return False
    return True


def start_rabbitmq(timeout: float = 90.0) -> None:
    """Start RabbitMQ if it is down and wait until it accepts AMQP connections."""
    if rabbitmq_is_up():
        return
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rabbitmq_is_up():
            return
        time.sleep(0.5)
    raise RuntimeError(f"RabbitMQ did not come back within {timeout:.0f}s")


@contextmanager
def rabbitmq_stopped() -> Iterator[None]:
    """Stop the RabbitMQ node for the block; it is started again whatever happens.

    Other test runs on this machine share the broker, so the restart is in ``finally``.
    """
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        yield
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=False, capture_output=True, timeout=120)
        start_rabbitmq()
