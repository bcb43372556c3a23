"""One contract, two publishers: what the relay may rely on from any ``Publisher``.

Each case runs against ``InMemoryPublisher`` and against ``RabbitMQPublisher`` on the real
broker, through a small harness that knows how to read back what each one delivered.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from outbox.relay.publishers import InMemoryPublisher, OutgoingMessage, Publisher, RabbitMQPublisher
from tests.broker import bound_queue
from tests.relay.conftest import consume

BOUND = "orders.#"


class Harness(Protocol):
    @property
    def publisher(self) -> Publisher: ...

    @property
    def exchange(self) -> str: ...

    def delivered(self, count: int) -> list[tuple[str, str, bytes]]:
        """(message_id, routing key, body) of what reached a queue bound with BOUND."""


@dataclass
class MemoryHarness:
    publisher: InMemoryPublisher
    exchange: str

    def delivered(self, count: int) -> list[tuple[str, str, bytes]]:
        return [(m.message_id, m.routing_key, m.body) for m in self.publisher.published]


@dataclass
class RabbitHarness:
    publisher: RabbitMQPublisher
    exchange: str
    queue: Any

    def delivered(self, count: int) -> list[tuple[str, str, bytes]]:
        received = consume(self.queue, count, timeout=10)
        return [(str(m.properties.message_id), m.routing_key, m.body) for m in received]


@pytest.fixture(params=["memory", "rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        exchange = "contract"
        yield MemoryHarness(InMemoryPublisher(bindings={exchange: [BOUND]}), exchange)
        return
    with bound_queue(binding_key=BOUND) as queue:
        publisher = RabbitMQPublisher(client_name="outbox-contract-test")
        try:
            yield RabbitHarness(publisher, queue.exchange, queue)
        finally:
            publisher.close()


def message(harness: Harness, key: int, routing_key: str = "orders.placed") -> OutgoingMessage:
    return OutgoingMessage(
        key=key,
        message_id=str(uuid.uuid4()),
        exchange=harness.exchange,
        routing_key=routing_key,
        event_type=routing_key,
        body=f'{{"n": {key}}}'.encode(),
        headers={"aggregate_type": "order", "aggregate_id": str(key)},
        timestamp=1_700_000_000,
    )


def test_a_batch_is_confirmed_and_delivered_in_order(harness: Harness) -> None:
    batch = [message(harness, key) for key in range(1, 301)]
    outcome = harness.publisher.publish_batch(batch, confirm_timeout=10)
    assert sorted(outcome.confirmed) == list(range(1, 301))
    assert (outcome.refused, outcome.unroutable, outcome.unanswered) == ({}, {}, [])
    assert outcome.broker_error is None
    delivered = harness.delivered(300)
    assert [d[0] for d in delivered] == [m.message_id for m in batch]
    assert delivered[0][2] == b'{"n": 1}'


def test_unroutable_messages_are_reported_and_the_rest_confirmed(harness: Harness) -> None:
    batch = [message(harness, 1), message(harness, 2, "nobody.listens"), message(harness, 3)]
    outcome = harness.publisher.publish_batch(batch, confirm_timeout=10)
    assert sorted(outcome.confirmed) == [1, 3]
    assert list(outcome.unroutable) == [2]
    assert "unroutable" in outcome.unroutable[2]
    assert "nobody.listens" in outcome.unroutable[2]
    assert [d[0] for d in harness.delivered(2)] == [batch[0].message_id, batch[2].message_id]


def test_after_send_runs_once_per_batch(harness: Harness) -> None:
    calls: list[int] = []
    harness.publisher.publish_batch(
        [message(harness, 1)], confirm_timeout=10, after_send=lambda: calls.append(1)
    )
    assert calls == [1]


def test_the_publisher_can_be_closed_and_used_again(harness: Harness) -> None:
    assert harness.publisher.publish_batch([message(harness, 1)], confirm_timeout=10).confirmed
    harness.publisher.close()
    harness.publisher.keepalive()
    outcome = harness.publisher.publish_batch([message(harness, 2)], confirm_timeout=10)
    assert outcome.confirmed == [2]


def test_an_empty_batch_is_a_no_op(harness: Harness) -> None:
    outcome = harness.publisher.publish_batch([], confirm_timeout=1)
    assert (outcome.confirmed, outcome.broker_error) == ([], None)


def test_an_unreachable_broker_leaves_every_message_unanswered() -> None:
    """The outage contract, against a port nothing listens on (and the in-memory switch)."""
    import pika

    memory = InMemoryPublisher()
    memory.broker_down = True
    rabbit = RabbitMQPublisher(
        pika.ConnectionParameters(host="127.0.0.1", port=1, connection_attempts=1, socket_timeout=1)
    )
    for publisher in (memory, rabbit):
        batch = [
            OutgoingMessage(k, str(uuid.uuid4()), "x", "a.b", "a.b", b"{}", {}, 0) for k in (1, 2)
        ]
        outcome = publisher.publish_batch(batch, confirm_timeout=1)
        assert outcome.unanswered == [1, 2]
        assert outcome.confirmed == []
        assert outcome.broker_error


def test_topic_matching_of_the_in_memory_publisher() -> None:
    from outbox.wire import topic_matches

    assert topic_matches("orders.#", "orders.a.b")
    assert topic_matches("orders.#", "orders")
    assert topic_matches("#", "anything.at.all")
    assert topic_matches("*.placed", "orders.placed")
    assert not topic_matches("*.placed", "orders.x.placed")
    assert not topic_matches("orders.*", "orders")
    assert not topic_matches("orders.#", "payments.x")


def test_two_batches_in_flight_are_answered_apart_and_delivered_in_order(harness: Harness) -> None:
    first = [message(harness, key) for key in range(1, 201)]
    second = [message(harness, 201), message(harness, 202, "nobody.listens")]
    second += [message(harness, key) for key in range(203, 401)]
    sent_first = harness.publisher.send_batch(first)
    sent_second = harness.publisher.send_batch(second)  # before the first is collected
    one = harness.publisher.collect(sent_first, confirm_timeout=10)
    two = harness.publisher.collect(sent_second, confirm_timeout=10)
    assert sorted(one.confirmed) == list(range(1, 201))
    assert (one.unroutable, one.refused, one.unanswered) == ({}, {}, [])
    assert sorted(two.confirmed) == [201, *range(203, 401)]
    assert list(two.unroutable) == [202], "a return belongs to its own batch"
    routed = [m.message_id for m in first + second if m.routing_key == "orders.placed"]
    assert [d[0] for d in harness.delivered(399)] == routed


def test_a_lost_connection_fails_the_batches_still_waiting_for_answers() -> None:
    with bound_queue(binding_key=BOUND) as queue:
        publisher = RabbitMQPublisher(client_name="outbox-contract-test")
        try:
            harness = RabbitHarness(publisher, queue.exchange, queue)
            first = publisher.send_batch([message(harness, key) for key in range(1, 101)])
            # Too many for all of its confirms to be back before the socket dies.
            second = publisher.send_batch([message(harness, key) for key in range(101, 20001)])
            connection = publisher.connection
            assert connection is not None
            # The socket dies under both batches, as when the broker goes away.
            transport = getattr(connection, "_impl")._transport  # noqa: B009
            transport._sock.shutdown(socket.SHUT_RDWR)
            outcomes = [publisher.collect(sent, confirm_timeout=5) for sent in (first, second)]
        finally:
            publisher.close()
    # How many confirms beat the socket's death depends on the machine's speed (on a quiet
    # machine all of them can): the promise checked below is that whatever was not answered
    # is reported with the broker error, never lost or counted twice.
    for outcome, keys in zip(outcomes, (range(1, 101), range(101, 20001)), strict=True):
        # Answered before the loss, or reported unanswered: never both, never neither.
        assert sorted(outcome.confirmed + outcome.unanswered) == list(keys)
        assert outcome.unroutable == {}
        assert outcome.broker_error or not outcome.unanswered
