"""Dead letters recorded in the database, and requeued from the record (issue 15, item 3).

The round trip runs on the real RabbitMQ and PostgreSQL: a consumer dead-letters a message,
the record holds everything about it, the broker's copy is taken away, the record is requeued
with ``outbox_dead_letters`` and the consumer processes the message with the same id.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings

from outbox.consumer import dead_letters as recording
from outbox.consumer.loop import ConsumerLoop
from outbox.consumer.processing import Delivery, Outcome
from outbox.consumer.registry import IncomingMessage, integration_handler, registry
from outbox.consumer.topology import declare
from outbox.models import DeadLetter, InboxMessage
from outbox.operations import dead_letters
from outbox.wire import HEADER_ATTEMPTS, HEADER_ROUTING_KEY
from tests.broker import connect, rabbitmq_is_up
from tests.consumer.conftest import ConsumerBroker
from tests.consumer.settings import FAST_RETRIES

pytestmark = pytest.mark.django_db(transaction=True)

CONSUMER = "dead-letter-records"


class OnPurposeError(Exception):
    """The test handler's failure while ``Switch.failing``."""


class Switch:
    """Whether the test consumer's handler fails, and the messages it processed."""

    failing = True
    processed: list[IncomingMessage] = []


def handle(message: IncomingMessage) -> None:
    if Switch.failing:
        raise OnPurposeError(f"refusing {message.payload} on attempt {message.attempt}")
    Switch.processed.append(message)


@pytest.fixture
def dead_letter_broker(settings: Settings) -> Iterator[ConsumerBroker]:
    """``CONSUMER``'s queues on a private exchange, fast retries; deleted afterwards."""
    deadline = time.monotonic() + 90
    while not rabbitmq_is_up() and time.monotonic() < deadline:
        time.sleep(0.5)
    exchange = f"test-{uuid.uuid4().hex[:12]}"
    settings.OUTBOX = {**settings.OUTBOX, **FAST_RETRIES, "EXCHANGE": exchange}
    Switch.failing, Switch.processed = True, []
    with registry.isolated():
        integration_handler("shop.#", consumer=CONSUMER)(handle)
        topology = declare(CONSUMER)
        amqp = connect()
        channel = amqp.channel()
        channel.confirm_delivery()
        try:
            yield ConsumerBroker(topology, amqp, channel)
        finally:
            queues = [topology.queue, topology.dead_letter_queue]
            queues += [topology.retry_queue(n) for n in range(1, len(topology.retry_delays_ms) + 1)]
            for queue in dict.fromkeys(queues):
                channel.queue_delete(queue)
            channel.exchange_delete(exchange)
            amqp.close()


@contextmanager
def consuming() -> Iterator[None]:
    loop = ConsumerLoop(registry.get(CONSUMER))
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as error:
            crashed.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert crashed == []


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def test_dead_letter_round_trip_record_requeue_process(
    dead_letter_broker: ConsumerBroker,
) -> None:
    broker = dead_letter_broker
    with consuming():
        message_id = broker.send(
            "shop.order_paid",
            {"order_id": 7},
            properties={
                "correlation_id": "req-42",
                "headers": {"aggregate_type": "order", "aggregate_id": "7", "x-tenant": "a"},
            },
        )
        record = wait_for(lambda: DeadLetter.objects.filter(message_id=message_id).first())
        # The original broker message is gone: only the database record is left.
        [copy] = broker.dead_letters(1)
        assert copy.properties.message_id == message_id

        assert (record.consumer, record.queue, record.status) == (
            CONSUMER,
            broker.topology.queue,
            DeadLetter.Status.DEAD,
        )
        assert (record.event_type, record.routing_key) == ("shop.order_paid", "shop.order_paid")
        assert (record.aggregate_type, record.aggregate_id) == ("order", "7")
        assert record.payload == {"order_id": 7}
        assert record.headers["x-tenant"] == "a"
        assert record.properties["correlation_id"] == "req-42"
        assert record.attempts == FAST_RETRIES["CONSUMER_MAX_ATTEMPTS"] == 3
        assert record.error_type.endswith("OnPurposeError")
        assert record.error == "refusing {'order_id': 7} on attempt 3"
        assert "Traceback" in record.traceback
        assert "in handle" in record.traceback
        assert Switch.processed == []

        Switch.failing = False
        out = io.StringIO()
        call_command(
            "outbox_dead_letters", CONSUMER, "requeue", message_id, "--noinput", stdout=out
        )
        assert f"requeued 1 dead letter of consumer {CONSUMER} to {broker.topology.queue}" in (
            out.getvalue()
        )
        [processed] = wait_for(lambda: Switch.processed)

    assert (processed.message_id, processed.attempt) == (message_id, 1)
    assert processed.routing_key == "shop.order_paid"
    assert processed.headers["x-tenant"] == "a"
    assert HEADER_ATTEMPTS not in processed.headers
    assert InboxMessage.objects.filter(consumer=CONSUMER, message_id=message_id).exists()
    record.refresh_from_db()
    assert (record.status, record.resolved_by) == (
        DeadLetter.Status.REQUEUED,
        "outbox_dead_letters",
    )
    assert broker.dead_letters(1, timeout=0.3) == []


def test_a_failed_record_neither_stops_the_consumer_nor_loses_the_dead_letter(
    dead_letter_broker: ConsumerBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(fields: dict[str, Any]) -> None:
        raise RuntimeError("database refused the record")

    monkeypatch.setattr(recording, "_write", broken)
    broker = dead_letter_broker
    with consuming():
        lost = broker.send("shop.order_paid", {"order_id": 1})
        [copy] = broker.dead_letters(1)
        Switch.failing = False
        behind = broker.send("shop.order_paid", {"order_id": 2})
        wait_for(lambda: Switch.processed)
    assert copy.properties.message_id == lost
    assert [message.message_id for message in Switch.processed] == [behind]
    assert not DeadLetter.objects.exists()
    assert f"could not record dead letter {lost}" in caplog.text


def delivery(body: bytes, headers: dict[str, Any], **properties: Any) -> Delivery:
    return Delivery(1, "rk", pika.BasicProperties(headers=headers, **properties), body)


def test_whatever_a_delivery_holds_is_recorded() -> None:
    odd = delivery(
        b"\xff not json",
        {"x-bytes": b"\xff\x00", "x-nul": "a\x00b", "x-death": [{"count": 1}], "x-nan": 1e999},
        message_id="m-1",
        type="shop.x",
        timestamp=1_700_000_000,
    )
    recording.record("odd", "events.odd", odd, Outcome("malformed", reason="body is not JSON"))
    nul_json = delivery(b'{"a": "\\u0000"}', {}, message_id="m-2")
    recording.record("odd", "events.odd", nul_json, Outcome("malformed", reason="?"))

    first, second = DeadLetter.objects.order_by("message_id")
    assert first.payload is None
    assert bytes(first.body) == b"\xff not json"
    assert first.headers == {"x-bytes": "\ufffd\ufffd", "x-nul": "a\ufffdb", "x-nan": "inf"}
    assert first.properties == {"timestamp": 1_700_000_000}
    assert (first.reason, first.attempts) == ("body is not JSON", 0)
    assert second.payload is None
    assert bytes(second.body) == b'{"a": "\\u0000"}'


def test_a_message_dead_lettered_twice_keeps_one_open_record() -> None:
    message = delivery(b"{}", {}, message_id="m-1", type="shop.x")
    for attempt in (3, 4):
        recording.record("c", "q", message, Outcome("failed", attempt, error_message=str(attempt)))
    assert list(DeadLetter.objects.values_list("attempts", "error")) == [(4, "4")]


def make_record(**fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "consumer": "shipping",
        "queue": "events.shipping",
        "message_id": str(uuid.uuid4()),
        "event_type": "orders.order_placed",
        "payload": {"order_id": 1},
        "body": b'{"order_id": 1}',
        "error": "KeyError: 'sku'\nsecond line",
        "attempts": 5,
    }
    values.update(fields)
    return DeadLetter.objects.create(**values)


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("outbox_dead_letters", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_list_show_and_discard_from_the_command_line() -> None:
    first = make_record(event_type="orders.order_paid")
    second = make_record()
    make_record(consumer="billing")

    listing = command("shipping", "list")
    assert listing.splitlines()[-1] == "2 dead letters of consumer shipping, status dead"
    assert first.message_id in listing
    assert "attempts 5  KeyError: 'sku'" in listing
    assert "second line" not in listing
    assert "newest 1 shown" in command("shipping", "list", "--limit", "1")
    assert first.message_id not in command("shipping", "list", "--event-type", "x.y")

    shown = command("shipping", "show", first.message_id)
    assert "second line" in shown
    assert '"order_id": 1' in shown

    discarded = command("shipping", "discard", second.message_id, "--noinput", "-v", "2")
    assert f"discarded {second.message_id} (orders.order_placed)" in discarded
    assert "discarded 1 dead letter of consumer shipping" in discarded
    assert first.message_id in command("shipping", "list", "-v", "0")
    second.refresh_from_db()
    assert second.status == DeadLetter.Status.DISCARDED
    assert "1 dead letter of consumer shipping, status dead" in command("shipping", "list")
    assert "2 dead letters of consumer shipping\n" in command("shipping", "list", "--status", "all")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nobody", "list"], "no dead letters recorded for consumer 'nobody'"),
        (["shipping", "requeue"], "requeue needs message ids, or --all"),
        (["shipping", "discard", "no-such-id", "--noinput"], "nothing to discard"),
        (["shipping", "show"], "show needs one or more message ids"),
        (["shipping", "discard", "--all"], "pass --noinput to discard"),
    ],
)
def test_command_errors_are_one_line(args: list[str], error: str) -> None:
    make_record()
    with pytest.raises(CommandError, match=error) as raised:
        command(*args)
    assert "\n" not in str(raised.value)
    assert DeadLetter.objects.get().status == DeadLetter.Status.DEAD


def test_requeue_to_a_missing_queue_exits_6_and_keeps_the_record() -> None:
    record = make_record(queue=f"test-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(CommandError, match="does not exist; declare it") as raised:
        command("shipping", "requeue", "--all", "--noinput")
    assert raised.value.returncode == 6
    record.refresh_from_db()
    assert record.status == DeadLetter.Status.DEAD


def test_requeue_properties_drop_the_attempt_history() -> None:
    record = make_record(
        routing_key="orders.order_placed",
        headers={HEADER_ATTEMPTS: 5, "x-outbox-position": 12, "x-tenant": "a"},
        properties={"content_type": "application/json", "timestamp": 1_700_000_000},
    )
    properties = dead_letters.requeue_properties(record)
    assert properties.headers == {
        "x-outbox-position": 12,
        "x-tenant": "a",
        HEADER_ROUTING_KEY: "orders.order_placed",
    }
    assert (properties.message_id, properties.type, properties.delivery_mode) == (
        record.message_id,
        "orders.order_placed",
        2,
    )
    assert (properties.content_type, properties.timestamp) == ("application/json", 1_700_000_000)
