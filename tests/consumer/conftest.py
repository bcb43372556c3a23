"""Fixtures of the consumer tests: a private exchange with the recorder consumer's queues on
the real RabbitMQ, messages put on it in the relay's wire format, consumer subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from django.db import connection
from pika.adapters.blocking_connection import BlockingChannel
from pytest_django.fixtures import Settings

from outbox.consumer.loop import ConsumerLoop
from outbox.consumer.registry import registry
from outbox.consumer.topology import Topology, declare
from tests.broker import Received, connect, rabbitmq_is_up
from tests.consumer import handlers
from tests.consumer.settings import FAST_RETRIES

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class ConsumerBroker:
    """The recorder consumer's queues on a private exchange, and ways to use them."""

    topology: Topology
    connection: pika.BlockingConnection
    channel: BlockingChannel
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return self.topology.exchange

    def send(
        self,
        event_type: str = "test.happened",
        payload: Any = None,
        *,
        message_id: str | None = None,
        body: bytes | None = None,
        routing_key: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> str:
        """Publish like the relay does (see DESIGN.md "Wire format"); return the message id.

        ``body`` replaces the JSON of ``payload``; ``properties`` override or (with None
        values) remove properties, to make malformed messages.
        """
        message_id = message_id or str(uuid.uuid4())
        wire: dict[str, Any] = {
            "message_id": message_id,
            "type": event_type,
            "content_type": "application/json",
            "delivery_mode": 2,
            "timestamp": int(time.time()),
            "headers": {"aggregate_type": "test", "aggregate_id": "1", "x-source": "tests"},
        }
        wire.update(properties or {})
        if body is None:
            body = json.dumps({} if payload is None else payload).encode()
        self.channel.basic_publish(
            self.exchange,
            routing_key or event_type,
            body,
            pika.BasicProperties(**wire),
            mandatory=True,
        )
        return message_id

    def reconnect(self) -> None:
        """Open a new connection, after a broker restart closed the old one."""
        with contextlib.suppress(pika.exceptions.AMQPError):
            self.connection.close()  # releases its socket; the broker has already dropped it
        self.connection = connect()
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting unacknowledged ones)."""
        result = self.channel.queue_declare(queue, passive=True)
        return int(result.method.message_count or 0)

    def dead_letters(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Take ``count`` messages off the dead-letter queue, waiting up to ``timeout``."""
        taken: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(taken) < count and time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(
                self.topology.dead_letter_queue, auto_ack=True
            )
            if method is None or properties is None:
                self.connection.sleep(0.05)
                continue
            raw = body.encode() if isinstance(body, str) else bytes(body or b"")
            taken.append(Received(raw, properties, method.routing_key or ""))
        return taken

    def start_consumer(self, *arguments: str) -> subprocess.Popen[str]:
        """``manage.py outbox_consume recorder`` in a new process, on the test database."""
        return self.start_process(
            "manage.py",
            "outbox_consume",
            handlers.RECORDER,
            "--settings=tests.consumer.settings",
            *arguments,
        )

    def start_process(self, *arguments: str) -> subprocess.Popen[str]:
        """``python <arguments>`` in a new process, on the test database and exchange."""
        environment = {
            **os.environ,
            "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
            "OUTBOX_EXCHANGE": self.exchange,
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=REPOSITORY,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def wait_for_consumers(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` consumers are attached to the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = self.channel.queue_declare(self.topology.queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                # The queue does not exist (yet); that closed the channel.
                self.channel = self.connection.channel()
                self.channel.confirm_delivery()
            else:
                if result.method.consumer_count == count:
                    return
            self.connection.sleep(0.1)
        raise AssertionError(f"{count} consumers did not attach within {timeout}s")


@contextmanager
def consumer_running() -> Iterator[None]:
    """The recorder's loop runs on a thread for the block; it is stopped afterwards, and must
    neither have died meanwhile nor fail to stop."""
    loop = ConsumerLoop(registry.get(handlers.RECORDER))
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as error:
            crashed.append(error)

    thread = threading.Thread(target=run, name="recorder-consumer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert crashed == []


@pytest.fixture
def broker(settings: Settings) -> Iterator[ConsumerBroker]:
    """The recorder's queues on a fresh exchange, with fast retries; deleted afterwards."""
    # Other test runs on this machine restart the shared broker now and then: wait for it
    # rather than fail (starting it here would break their outage).
    deadline = time.monotonic() + 90
    while not rabbitmq_is_up() and time.monotonic() < deadline:
        time.sleep(0.5)
    exchange = f"test-{uuid.uuid4().hex[:12]}"
    settings.OUTBOX = {**settings.OUTBOX, **FAST_RETRIES, "EXCHANGE": exchange}
    topology = declare(handlers.RECORDER)
    amqp = connect()
    channel = amqp.channel()
    channel.confirm_delivery()
    state = ConsumerBroker(topology, amqp, channel)
    try:
        yield state
    finally:
        for process in state.processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)  # also closes its output pipe
        amqp = state.connection  # a test may have reconnected
        if amqp.is_open:
            cleanup = amqp.channel()
            queues = [topology.queue, topology.dead_letter_queue]
            queues += [topology.retry_queue(n) for n in range(1, len(topology.retry_delays_ms) + 1)]
            for queue in dict.fromkeys(queues):
                cleanup.queue_delete(queue)
            cleanup.exchange_delete(exchange)
            amqp.close()
