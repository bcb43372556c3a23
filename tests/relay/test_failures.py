"""At-least-once through failures: a relay SIGKILLed at each step of a batch, and RabbitMQ
stopped in the middle of a run."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from django.db import transaction

from outbox import Message, publish_many
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.relay.publishers import RabbitMQPublisher
from tests.broker import BoundQueue, connect, rabbitmq_stopped
from tests.relay.conftest import (
    REPO_ROOT,
    consume,
    crashing_relay_command,
    fast_settings,
    relay_command,
    relay_env,
)

pytestmark = pytest.mark.django_db(transaction=True)


def write(count: int) -> set[str]:
    with transaction.atomic():
        rows = publish_many(
            Message(
                "orders.changed",
                {"n": n},
                aggregate_type="order" if n % 3 else None,
                aggregate_id=n % 7 if n % 3 else None,
            )
            for n in range(count)
        )
    return {str(row.message_id) for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["after_claim", "after_publish", "after_confirm"])
def test_a_relay_killed_mid_batch_loses_nothing(exchange: BoundQueue, crash_at: str) -> None:
    written = write(40)
    killed = subprocess.run(
        crashing_relay_command(crash_at),
        env=relay_env(EXCHANGE=exchange.exchange, LEASE_SECONDS=1),
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    leased = OutboxMessage.objects.exclude(lease_owner="")
    assert leased.count() > 0, "the killed relay claimed nothing"
    assert OutboxMessage.objects.filter(status="published").count() == 0
    sent_before_crash = exchange.drain(quiet_seconds=0.5)

    time.sleep(1.1)  # the dead relay's lease expires
    relay = Relay(RabbitMQPublisher(), settings=fast_settings())
    try:
        relay.drain()
    finally:
        relay.close()
    received = consume(exchange, len(sent_before_crash) + len(written), timeout=15)
    times = Counter(str(message.properties.message_id) for message in received)
    assert set(times) == written, "a message was lost"
    assert OutboxMessage.objects.exclude(status="published").count() == 0
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {0}
    if crash_at == "after_claim":
        assert set(times.values()) == {1}, "nothing was sent before the crash"
    else:
        # The first batch went out before the crash and again after it, same message_id.
        assert max(times.values()) == 2
        assert len(sent_before_crash) > 0


@pytest.fixture
def durable_queue() -> Iterator[tuple[str, str]]:
    """A durable exchange and queue that survive a broker restart; deleted afterwards."""
    exchange = f"test-outage-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-queue"
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(
        exchange, exchange_type=pika.exchange_type.ExchangeType("topic"), durable=True
    )
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, routing_key="#")
    connection.close()
    try:
        yield exchange, queue
    finally:
        connection = connect()
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()


def read_all(queue: str, expected: set[str], timeout: float) -> Counter[str]:
    connection = connect()
    try:
        channel = connection.channel()
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + timeout
        while not expected <= set(seen) and time.monotonic() < deadline:
            method, properties, _ = channel.basic_get(queue, auto_ack=True)
            if method is None or properties is None:
                connection.sleep(0.05)
            else:
                seen[str(properties.message_id)] += 1
        return seen
    finally:
        connection.close()


@pytest.mark.slow
def test_rabbitmq_stopped_during_a_run_loses_nothing_and_uses_no_attempts(
    durable_queue: tuple[str, str], processes: list[subprocess.Popen[bytes]], settings: Any
) -> None:
    exchange, queue = durable_queue
    settings.OUTBOX = {**settings.OUTBOX, "EXCHANGE": exchange}
    worker = subprocess.Popen(
        relay_command(),
        env=relay_env(
            EXCHANGE=exchange, POLL_INTERVAL_SECONDS=0.2, RECONNECT_BACKOFF_MAX_SECONDS=1
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    processes.append(worker)
    written = write(3000)
    with rabbitmq_stopped():
        # The stop lands in the middle of draining the 3,000; more rows commit meanwhile.
        written |= write(500)
        time.sleep(1.0)
        assert worker.poll() is None, "the relay died with the broker"
        charged = set(OutboxMessage.objects.exclude(attempts=0).values_list("last_error"))
        assert charged == set(), "the outage used up attempts"
        assert OutboxMessage.objects.filter(status="ready").count() > 0
    seen = read_all(queue, written, timeout=60)
    assert set(seen) == written, f"{len(written - set(seen))} messages lost"
    assert OutboxMessage.objects.exclude(status="published").count() == 0
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {0}
    assert worker.poll() is None
