"""The consume loop in this process against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from pytest_django.fixtures import Settings

from domain_events import handler
from domain_events.registry import HandlerRegistry
from outbox.consumer.loop import ConsumerLoop, consume
from outbox.consumer.processing import REASON_HANDLER_FAILED
from outbox.consumer.registry import registry
from outbox.models import InboxMessage, OutboxMessage
from outbox.wire import (
    HEADER_ATTEMPTS,
    HEADER_CONSUMER,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_REASON,
    HEADER_ROUTING_KEY,
)
from outbox.writer import publish
from tests.broker import rabbitmq_stopped
from tests.consumer.conftest import ConsumerBroker, consumer_running
from tests.consumer.handlers import RECORDER
from tests.testapp.models import Counter, CounterBumped, LogLine

pytestmark = pytest.mark.django_db(transaction=True)


def runs_of(message_id: str) -> int:
    return LogLine.objects.filter(text=message_id).count()


def test_duplicates_and_relay_republish_are_processed_once(broker: ConsumerBroker) -> None:
    first = broker.send(payload={"n": 1})
    broker.send(payload={"n": 1}, message_id=first)  # the broker delivers it twice
    other = broker.send(payload={"n": 2})
    # A relay that crashed before marking the row published sends it again, later.
    broker.send(payload={"n": 1}, message_id=first, properties={"timestamp": int(time.time()) + 5})

    assert consume(RECORDER, max_messages=4, until_idle=5) == 4

    assert runs_of(first) == 1
    assert runs_of(other) == 1
    assert InboxMessage.objects.filter(consumer=RECORDER).count() == 2
    assert broker.depth(broker.topology.queue) == 0
    assert broker.dead_letters(1, timeout=0.3) == []


def test_failing_handler_is_retried_with_a_delay_then_dead_lettered(
    broker: ConsumerBroker,
) -> None:
    message_id = broker.send("test.failing", {"fail_attempts": 99}, routing_key="test.custom-key")
    started = time.monotonic()

    assert consume(RECORDER, max_messages=3, until_idle=5) == 3

    # Two retries waited 0.2 s and 0.3 s in their retry queues: no hot loop.
    assert time.monotonic() - started >= 0.5
    [dead] = broker.dead_letters(1)
    headers = dead.properties.headers or {}
    assert dead.properties.message_id == message_id
    assert dead.properties.type == "test.failing"
    assert json.loads(dead.body) == {"fail_attempts": 99}
    assert headers[HEADER_REASON] == REASON_HANDLER_FAILED
    assert headers[HEADER_ATTEMPTS] == 3
    assert headers[HEADER_ERROR_TYPE] == "tests.consumer.handlers.HandlerFailedError"
    assert headers[HEADER_ERROR_MESSAGE] == "failing on purpose on attempt 3"
    assert headers[HEADER_CONSUMER] == RECORDER
    assert headers[HEADER_ROUTING_KEY] == "test.custom-key"
    assert headers["x-source"] == "tests"
    # Every attempt rolled back: no effect and no inbox record.
    assert runs_of(message_id) == 0
    assert not InboxMessage.objects.exists()


def test_a_transient_failure_succeeds_on_retry(broker: ConsumerBroker) -> None:
    message_id = broker.send(payload={"fail_attempts": 1})

    assert consume(RECORDER, max_messages=2, until_idle=5) == 2

    assert runs_of(message_id) == 1
    assert InboxMessage.objects.filter(message_id=message_id).exists()
    assert broker.dead_letters(1, timeout=0.3) == []


def test_malformed_messages_are_dead_lettered_and_good_ones_behind_them_processed(
    broker: ConsumerBroker,
) -> None:
    good = [broker.send(payload={"n": 0})]
    broker.send(body=b"{not json", message_id="bad-json")
    broker.send(body="\u00e9".encode("latin-1"), message_id="bad-utf8")
    broker.send(body=b"[1, 2]", message_id="bad-array")
    broker.send(properties={"message_id": None, "correlation_id": "no-id"})
    broker.send(properties={"type": None}, message_id="no-type")
    broker.send("other.event", routing_key="test.misrouted", message_id="unknown-type")
    good.append(broker.send(payload={"n": 1}))

    assert consume(RECORDER, max_messages=8, until_idle=5) == 8

    assert [runs_of(message_id) for message_id in good] == [1, 1]
    reasons = {
        dead.properties.message_id or dead.properties.correlation_id: (
            (dead.properties.headers or {})[HEADER_REASON]
        )
        for dead in broker.dead_letters(6)
    }
    assert reasons.keys() == {
        "bad-json",
        "bad-utf8",
        "bad-array",
        "no-id",
        "no-type",
        "unknown-type",
    }
    assert reasons["bad-json"].startswith("body is not UTF-8 JSON")
    assert reasons["bad-utf8"].startswith("body is not UTF-8 JSON")
    assert reasons["bad-array"] == "body is a JSON list, not an object"
    assert reasons["no-id"] == "no message_id property"
    assert reasons["no-type"] == "no type property (the event type)"
    assert (
        reasons["unknown-type"] == "consumer 'recorder' has no handler for event type 'other.event'"
    )
    assert InboxMessage.objects.count() == 2


def test_consume_process_publish_chain_is_atomic(
    broker: ConsumerBroker, handlers: HandlerRegistry, settings: Settings
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "CONSUMER_MAX_ATTEMPTS": 1}

    @handler(CounterBumped)
    def announce(event: CounterBumped) -> None:
        publish("test.counter_bumped", {"counter": event.counter_name})

    committed = broker.send(payload={"counter": "kept"})
    rolled_back = broker.send(payload={"counter": "dropped", "fail_attempts": 1})

    assert consume(RECORDER, max_messages=2, until_idle=5) == 2

    # The handler's write, the aggregate, its domain event's outbox row, the handler's own
    # outbox row and the inbox record: all of them, or none.
    assert runs_of(committed) == 1
    assert Counter.objects.get().name == "kept"
    assert sorted(OutboxMessage.objects.values_list("event_type", flat=True)) == [
        "test.counter_bumped",
        "test.recorded",
    ]
    assert OutboxMessage.objects.get(event_type="test.recorded").payload == {
        "message_id": committed
    }
    assert list(InboxMessage.objects.values_list("message_id", flat=True)) == [committed]
    assert runs_of(rolled_back) == 0
    assert len(broker.dead_letters(1)) == 1


def test_heartbeats_are_answered_while_a_handler_runs_long(
    broker: ConsumerBroker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # With a 1 s heartbeat RabbitMQ closes a connection that is silent for about 2 s.
    settings.OUTBOX = {
        **settings.OUTBOX,
        "BROKER_URL": f"{settings.OUTBOX['BROKER_URL']}?heartbeat=1",
    }
    message_id = broker.send(payload={"sleep": 4})

    with caplog.at_level(logging.WARNING, logger="outbox.consumer"):
        assert consume(RECORDER, max_messages=1, until_idle=10) == 1

    assert runs_of(message_id) == 1
    assert "connection lost" not in caplog.text
    assert broker.depth(broker.topology.queue) == 0


def test_consumer_reconnects_after_losing_its_connection(broker: ConsumerBroker) -> None:
    with consumer_running():
        before = broker.send(payload={"n": 1})
        wait_until(lambda: runs_of(before) == 1)
        # What a broker restart does to the consumer: the server closes its connection.
        close_connections(f"outbox_consume {RECORDER}")
        after = broker.send(payload={"n": 2})
        wait_until(lambda: runs_of(after) == 1, timeout=30)
    assert (runs_of(before), runs_of(after)) == (1, 1)


def test_consumer_reconnects_after_rabbitmq_restarts(broker: ConsumerBroker) -> None:
    with consumer_running():
        before = broker.send(payload={"n": 1})
        wait_until(lambda: runs_of(before) == 1)
        with rabbitmq_stopped():
            time.sleep(2)  # the consumer has lost its connection and keeps trying
        broker.reconnect()
        after = broker.send(payload={"n": 2})
        wait_until(lambda: runs_of(after) == 1, timeout=60)
    assert (runs_of(before), runs_of(after)) == (1, 1)


def close_connections(client_name_prefix: str) -> None:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if client_name_prefix in line]
    assert pids, f"no connection named {client_name_prefix!r}"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "close_connection", pid, "closed by test"],
            check=True,
            capture_output=True,
            timeout=60,
        )


def wait_until(condition: object, timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def test_inbox_records_carry_consumer_type_and_time(broker: ConsumerBroker) -> None:
    message_id = broker.send("test.timed", {})
    before = datetime.now(UTC) - timedelta(seconds=1)
    consume(RECORDER, max_messages=1, until_idle=5)
    record = InboxMessage.objects.get()
    assert (record.consumer, record.message_id, record.event_type) == (
        RECORDER,
        message_id,
        "test.timed",
    )
    assert record.processed_at >= before


def test_consumer_declares_its_queue_again_when_it_is_deleted(broker: ConsumerBroker) -> None:
    loop = ConsumerLoop(registry.get(RECORDER), until_idle=30)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        broker.wait_for_consumers(1)
        broker.channel.queue_delete(broker.topology.queue)
        broker.wait_for_consumers(1)  # passive declare fails until the queue is back
        message_id = broker.send(payload={"n": 1})
        wait_until(lambda: runs_of(message_id) == 1, timeout=30)
    finally:
        loop.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_declare_only_declares_and_exits(broker: ConsumerBroker) -> None:
    broker.channel.queue_delete(broker.topology.queue)
    output = StringIO()
    call_command("outbox_consume", RECORDER, "--declare-only", stdout=output)
    assert output.getvalue().strip() == (
        f"declared {broker.topology.queue} on exchange {broker.exchange}"
    )
    assert broker.depth(broker.topology.queue) == 0  # passive declare: it exists again
    broker.send(payload={"n": 1})
    assert broker.depth(broker.topology.queue) == 1  # bound: the message was routed to it
