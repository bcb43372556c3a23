"""The relay against the real RabbitMQ and PostgreSQL: wire format, rollbacks, poison
messages, the Celery task, and the outbox_relay command in both modes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from outbox import Message, publish, publish_many
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.relay.publishers import RabbitMQPublisher
from tests.broker import BoundQueue, bound_queue
from tests.relay.conftest import consume, fast_settings, payloads, relay_command, relay_env

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxMessage.Status


class RollbackError(Exception):
    pass


def rabbit_relay(**changes: Any) -> Relay:
    return Relay(RabbitMQPublisher(), settings=fast_settings(**changes))


def test_a_committed_row_arrives_in_the_wire_format(exchange: BoundQueue) -> None:
    with transaction.atomic():
        row = publish(
            "orders.order_placed",
            {"order_id": 1, "sku": "mug"},
            aggregate_type="order",
            aggregate_id="1",
            headers={"x-tenant": "a", "traceparent": "00-0af7651916cd43dd-b7ad6b7169203331-01"},
        )
    relay = rabbit_relay()
    try:
        assert relay.drain().published == 1
    finally:
        relay.close()
    [received] = consume(exchange, 1)
    properties = received.properties
    assert json.loads(received.body) == {"order_id": 1, "sku": "mug"}
    assert received.routing_key == "orders.order_placed"
    assert properties.message_id == str(row.message_id)
    assert properties.type == "orders.order_placed"
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert properties.timestamp == int(row.created_at.timestamp())
    assert properties.headers == {
        "aggregate_type": "order",
        "aggregate_id": "1",
        "x-outbox-position": row.position,
        "x-tenant": "a",
        "traceparent": "00-0af7651916cd43dd-b7ad6b7169203331-01",
    }
    stored = OutboxMessage.objects.get()
    assert stored.status == Status.PUBLISHED
    assert stored.published_at is not None
    assert (stored.attempts, stored.lease_owner) == (0, "")


def test_a_rolled_back_transaction_publishes_nothing(exchange: BoundQueue) -> None:
    def write_then_fail() -> None:
        with transaction.atomic():
            publish("orders.order_placed", {"order_id": 1})
            raise RollbackError

    with pytest.raises(RollbackError):
        write_then_fail()
    relay = rabbit_relay()
    try:
        assert relay.drain().published == 0
    finally:
        relay.close()
    assert exchange.drain(quiet_seconds=0.3) == []


@pytest.mark.parametrize("max_per_key", [1, None])
def test_a_poison_message_fails_after_max_attempts_while_other_keys_flow(
    settings: Any, max_per_key: int | None
) -> None:
    with bound_queue(binding_key="orders.#") as queue:
        settings.OUTBOX = {**settings.OUTBOX, "EXCHANGE": queue.exchange}
        settings.OUTBOX["MAX_PER_KEY"] = max_per_key
        with transaction.atomic():
            publish("refunds.issued", {"n": "poison"}, aggregate_type="order", aggregate_id=1)
            publish("orders.paid", {"n": "behind"}, aggregate_type="order", aggregate_id=1)
            publish_many(
                Message("orders.placed", {"n": n}, aggregate_type="order", aggregate_id=2)
                for n in range(5)
            )
        relay = rabbit_relay(max_attempts=3)
        try:
            for _ in range(4):
                relay.drain()
        finally:
            relay.close()
        # Strict mode never sends the row behind a refused one; by default it shares the
        # poison's run, the broker accepts it, and it is delivered (docs/relay.md).
        delivered_behind = [] if max_per_key == 1 else [{"n": "behind"}]
        received = payloads(consume(queue, 5 + len(delivered_behind)))
        assert [p for p in received if p["n"] != "behind"] == [{"n": n} for n in range(5)]
        assert [p for p in received if p["n"] == "behind"] == delivered_behind
    poison, behind = OutboxMessage.objects.filter(aggregate_id="1").order_by("position")
    assert poison.status == Status.FAILED
    assert poison.attempts == 3
    assert "unroutable" in poison.last_error
    assert "refunds.issued" in poison.last_error
    if max_per_key == 1:
        assert (behind.status, behind.attempts) == (Status.READY, 0)
    else:
        assert (behind.status, behind.attempts) == (Status.PUBLISHED, 0)


def test_the_celery_task_drains_and_reuses_its_broker_connection(exchange: BoundQueue) -> None:
    from outbox import tasks

    with transaction.atomic():
        publish_many(Message("orders.placed", {"n": n}) for n in range(20))
    assert tasks.publish_outbox.apply(kwargs={"time_budget": 5}).get() == 20
    relay = tasks._relay()
    assert isinstance(relay.publisher, RabbitMQPublisher)
    first_connection = relay.publisher.connection
    assert first_connection is not None
    assert first_connection.is_open
    with transaction.atomic():
        publish("orders.placed", {"n": 20})
    assert tasks.publish_outbox.apply().get() == 1
    assert relay.publisher.connection is first_connection
    assert sorted(p["n"] for p in payloads(consume(exchange, 21))) == list(range(21))


def test_outbox_relay_once_prints_the_count(
    exchange: BoundQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    with transaction.atomic():
        publish_many(Message("orders.placed", {"n": n}) for n in range(3))
    call_command("outbox_relay", "--once")
    assert capsys.readouterr().out.strip() == "published 3, retried 0, failed 0, released 0"
    assert len(consume(exchange, 3)) == 3


def start_worker(processes: list[subprocess.Popen[bytes]], exchange: str, **outbox: Any) -> Any:
    worker = subprocess.Popen(
        relay_command(),
        env=relay_env(EXCHANGE=exchange, **outbox),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(worker)
    assert worker.stdout is not None
    assert b"running" in worker.stdout.readline()
    return worker


def test_the_worker_wakes_on_commit_and_stops_cleanly_on_sigterm(
    exchange: BoundQueue, processes: list[subprocess.Popen[bytes]]
) -> None:
    # A poll interval far longer than the test: only the notification can wake the worker.
    worker = start_worker(processes, exchange.exchange, POLL_INTERVAL_SECONDS=60)
    time.sleep(0.5)
    with transaction.atomic():
        publish("orders.placed", {"n": 1})
    committed = time.monotonic()
    assert payloads(consume(exchange, 1, timeout=10)) == [{"n": 1}]
    assert time.monotonic() - committed < 5
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=70)
    assert worker.returncode == 0, err.decode()
    assert b"outbox relay stopped" in out


def test_the_worker_reconnects_after_losing_its_database_connections(
    exchange: BoundQueue, processes: list[subprocess.Popen[bytes]]
) -> None:
    worker = start_worker(processes, exchange.exchange, POLL_INTERVAL_SECONDS=0.5)
    with transaction.atomic():
        publish("orders.placed", {"n": 1})
    assert len(consume(exchange, 1, timeout=10)) == 1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (terminated,) = cursor.fetchone()
    assert terminated >= 1, "the worker's connections were not found"
    with transaction.atomic():
        publish("orders.placed", {"n": 2})
    assert payloads(consume(exchange, 2, timeout=20)) == [{"n": 1}, {"n": 2}]
    assert worker.poll() is None, "the worker died instead of reconnecting"


@pytest.mark.parametrize(
    "bad_headers",
    [{"price": 1.5}, {"big": 2**63}, {"nested": {"k" * 256: 1}}],
    ids=["float", "int-beyond-64-bits", "nested-key-over-255-bytes"],
)
def test_a_row_amqp_cannot_encode_is_refused_alone_and_the_batch_flows(
    exchange: BoundQueue, bad_headers: dict[str, Any]
) -> None:
    # Rows written around publish()'s checks (an older version, raw SQL, an admin edit): the
    # oldest ready row is the bad one, so it is in every batch the relay claims.
    with transaction.atomic():
        bad = publish("orders.placed", {"n": "bad"}, aggregate_type="order", aggregate_id="bad")
        publish_many(
            Message("orders.placed", {"n": n}, aggregate_type="order", aggregate_id=str(n))
            for n in range(5)
        )
    OutboxMessage.objects.filter(pk=bad.pk).update(headers=bad_headers)
    relay = rabbit_relay(max_attempts=2)
    try:
        first = relay.drain()
        assert first.broker_error is None  # not mistaken for a broker outage
        assert first.published == 5
        relay.drain()
    finally:
        relay.close()
    assert sorted(p["n"] for p in payloads(consume(exchange, 5))) == list(range(5))
    assert len(exchange.drain(quiet_seconds=0.3)) == 5  # nothing sent twice (drain: all so far)
    stored = OutboxMessage.objects.get(pk=bad.pk)
    assert stored.status == Status.FAILED
    assert stored.attempts == 2
    assert "cannot be encoded as AMQP properties" in stored.last_error
