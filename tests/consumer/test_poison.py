"""Poison deliveries: whatever a message holds, the consumer dead-letters what it cannot take,
with the reason, and goes on with the message behind it (issue 10, item 2).

Each message is put on the consumer's queue as a foreign client or an attacker would write it
(``tests.consumer.foreign`` writes the field types pika never does), followed by a good
message; the in-process loop runs on a thread and must still be running at the end.
"""

from __future__ import annotations

import decimal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pika
import pytest

from outbox.consumer import processing
from outbox.consumer import republish as copies
from outbox.consumer.fields import NESTED_TOO_DEEPLY
from outbox.consumer.loop import REASON_UNEXPECTED, ConsumerLoop
from outbox.consumer.processing import REASON_HANDLER_FAILED
from outbox.models import InboxMessage
from outbox.wire import (
    HEADER_ATTEMPTS,
    HEADER_ERROR_TYPE,
    HEADER_POSITION,
    HEADER_REASON,
    HEADER_REWRITTEN,
)
from tests.broker import Received
from tests.consumer.conftest import ConsumerBroker, consumer_running
from tests.consumer.foreign import (
    double,
    foreign_encoding,
    long_string,
    nested_table,
    single,
    timestamp,
)
from tests.testapp.models import LogLine

pytestmark = pytest.mark.django_db(transaction=True)

#: Header values of every AMQP field type pika decodes, and the value a copy carries back.
EVERY_FIELD_TYPE: dict[str, Any] = {
    "x-decimal": decimal.Decimal("12.34"),
    "x-table": {"nested": {"deeper": [1, "two", None]}},
    "x-array": [1, "a", True, None, b"\x00\x01"],
    "x-bytes": b"\xff\x00",
    "x-true": True,
    "x-false": False,
    "x-none": None,
    "x-datetime": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "x-int": -(2**63),
}


def runs_of(message_id: str) -> int:
    return LogLine.objects.filter(text=message_id).count()


def dead_lettered_then_good_processed(
    broker: ConsumerBroker, send_poison: Callable[[], object], timeout: float = 20.0
) -> Received:
    """Send the poison then a good message; return the poison's dead letter once the good
    message has been processed."""
    with consumer_running():
        send_poison()
        good = broker.send(payload={"n": "behind the poison"})
        deadline = time.monotonic() + timeout
        while runs_of(good) == 0:
            assert time.monotonic() < deadline, "the message behind the poison was not processed"
            time.sleep(0.05)
        [dead] = broker.dead_letters(1, timeout=timeout)
        assert broker.dead_letters(1, timeout=0.3) == []
    assert runs_of(good) == 1
    return dead


def reason_of(dead: Received) -> str:
    return str((dead.properties.headers or {})[HEADER_REASON])


POISON_PROPERTIES = [
    pytest.param(
        {"body": b'{"a":' * 100_000 + b"1" + b"}" * 100_000},
        "body is not UTF-8 JSON: nested too deeply to decode",
        id="nested-json",
    ),
    pytest.param(
        {"properties": {"timestamp": 2**62}},
        "timestamp property 4611686018427387904 is not a time Python can represent",
        id="timestamp-2**62",
    ),
    pytest.param(
        {"payload": {"fail_attempts": 99}, "headers": {HEADER_ATTEMPTS: -10}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: -10",
        id="attempts-negative",
    ),
    pytest.param(
        {"payload": {"fail_attempts": 99}, "headers": {HEADER_ATTEMPTS: "3"}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: '3'",
        id="attempts-string",
    ),
    pytest.param(
        {"headers": {HEADER_ATTEMPTS: True}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: True",
        id="attempts-bool",
    ),
    pytest.param(
        {"payload": {"fail_attempts": 99}, "headers": {HEADER_ATTEMPTS: 2**63 - 1}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: {2**63 - 1}",
        id="attempts-huge",
    ),
    pytest.param(
        # A foreign client's double: pika decodes it to the integer 10**19.
        {"payload": {"fail_attempts": 99}, "headers": {HEADER_ATTEMPTS: double(1e19)}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: 10000000000000000000",
        id="attempts-double",
    ),
    pytest.param(
        {"headers": {HEADER_ATTEMPTS: None}},
        f"{HEADER_ATTEMPTS} header is not a count of attempts: None",
        id="attempts-none",
    ),
    pytest.param(
        {"headers": {HEADER_POSITION: "7"}},
        f"{HEADER_POSITION} header is not a position: '7'",
        id="position-string",
    ),
    pytest.param(
        {"headers": {HEADER_POSITION: -1}},
        f"{HEADER_POSITION} header is not a position: -1",
        id="position-negative",
    ),
    pytest.param(
        {"headers": {HEADER_POSITION: True}},
        f"{HEADER_POSITION} header is not a position: True",
        id="position-bool",
    ),
    pytest.param(
        {"properties": {"message_id": b"\xff\xfe"}},
        "message_id property is not UTF-8 text: b'\\xff\\xfe'",
        id="message-id-not-utf8",
    ),
    pytest.param(
        {"properties": {"message_id": "a\x00b"}},
        "message_id property contains the NUL character, which PostgreSQL text cannot hold:"
        " 'a\\x00b'",
        id="message-id-nul",
    ),
    pytest.param(
        {"properties": {"type": b"test.\xff"}},
        "type property is not UTF-8 text: b'test.\\xff'",
        id="type-not-utf8",
    ),
    pytest.param(
        {"properties": {"content_type": "text/plain"}},
        "content_type 'text/plain' is not application/json",
        id="content-type",
    ),
    pytest.param(
        {"properties": {"content_encoding": "gzip"}},
        "content_encoding 'gzip' is not supported (the body must be plain UTF-8)",
        id="content-encoding",
    ),
]


@pytest.mark.parametrize(("poison", "reason"), POISON_PROPERTIES)
def test_poison_is_dead_lettered_with_its_reason_and_the_next_message_processed(
    broker: ConsumerBroker, poison: dict[str, Any], reason: str
) -> None:
    properties = dict(poison.get("properties", {}))
    if "headers" in poison:
        properties["headers"] = {"aggregate_type": "test", "aggregate_id": "1", **poison["headers"]}

    def send() -> None:
        with foreign_encoding():
            broker.send(
                payload=poison.get("payload"),
                body=poison.get("body"),
                properties=properties,
                message_id="poison",
            )

    dead = dead_lettered_then_good_processed(broker, send)

    assert reason_of(dead) == reason
    assert not InboxMessage.objects.filter(message_id="poison").exists()
    assert runs_of("poison") == 0


def headers_after_retries(broker: ConsumerBroker, headers: dict[Any, Any]) -> dict[str, Any]:
    """Send a message with ``headers`` (foreign encoding) whose handler always fails; return
    the headers of its dead letter, after all its attempts."""

    def send() -> None:
        with foreign_encoding():
            broker.send(
                payload={"fail_attempts": 99}, message_id="poison", properties={"headers": headers}
            )

    dead = dead_lettered_then_good_processed(broker, send)
    assert reason_of(dead) == REASON_HANDLER_FAILED
    assert (dead.properties.headers or {})[HEADER_ATTEMPTS] == 3
    assert runs_of("poison") == 0
    return dict(dead.properties.headers or {})


def test_a_foreign_double_header_goes_through_retries_to_the_dead_letters_as_text(
    broker: ConsumerBroker,
) -> None:
    # pika decodes the double 1e19 to the int 10**19, which no AMQP integer can hold.
    headers = headers_after_retries(broker, {"x-price": double(1e19), "x-kept": 7})

    assert headers["x-price"] == "10000000000000000000"
    assert headers["x-kept"] == 7
    assert "x-price" in str(headers[HEADER_REWRITTEN])


def test_header_values_of_every_field_type_survive_retries_and_dead_lettering(
    broker: ConsumerBroker,
) -> None:
    headers = headers_after_retries(
        broker,
        {
            **EVERY_FIELD_TYPE,
            "x-single": single(2.5),
            "x-not-utf8": long_string(b"\xc3\x28"),
            "x-deep-double": [{"price": double(-1e19)}],
            "x-far-future": timestamp(2**62),
            b"x-\xff": "a header name that is not UTF-8",
        },
    )

    assert {key: headers[key] for key in EVERY_FIELD_TYPE} == EVERY_FIELD_TYPE
    assert headers["x-single"] == 2  # pika turns floats into integers when it decodes them
    assert headers["x-not-utf8"] == b"\xc3\x28"  # the raw bytes: sent on as a byte array
    # The timestamp beyond Python's datetime arrives as its number of seconds.
    assert headers["x-far-future"] == 2**62
    # Within a header pika cannot encode, the whole header becomes text.
    assert headers["x-deep-double"] == '[{"price": -10000000000000000000}]'
    assert headers[b"x-\xff"] == "a header name that is not UTF-8"  # type: ignore[index]
    assert "x-deep-double" in str(headers[HEADER_REWRITTEN])


def test_a_timestamp_header_beyond_datetime_does_not_stop_the_consumer(
    broker: ConsumerBroker,
) -> None:
    # pika fails to decode the frame; it reports that as a lost connection, and the same
    # message would be redelivered forever.
    with consumer_running():
        with foreign_encoding():
            poison = broker.send(properties={"headers": {"x-when": timestamp(2**62)}})
        good = broker.send(payload={"n": 1})
        deadline = time.monotonic() + 20
        while runs_of(good) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert (runs_of(poison), runs_of(good)) == (1, 1)


def test_a_header_nested_beyond_the_recursion_limit_is_decoded_as_a_marker(
    broker: ConsumerBroker,
) -> None:
    # pika recurses once per level, fails with RecursionError, and reports a lost connection.
    headers = headers_after_retries(broker, {"x-deep": nested_table(3000), "x-kept": 1})

    assert headers["x-kept"] == 1
    # The levels pika could decode are kept; the one that overflowed is the marker.
    leaf, depth = headers["x-deep"], 0
    while isinstance(leaf, dict):
        leaf, depth = leaf["k"], depth + 1
    assert leaf == NESTED_TOO_DEEPLY
    assert 100 < depth < 3000


def test_a_copy_that_would_not_fit_one_frame_drops_the_largest_headers(
    broker: ConsumerBroker,
) -> None:
    # The original fits the broker's frame (131,072 bytes) with 100 bytes to spare; the
    # dead-letter copy adds more than that, and the broker would close the connection.
    base = pika.BasicProperties(
        message_id="poison",
        type="other.event",
        content_type="application/json",
        delivery_mode=2,
        timestamp=int(time.time()),
        headers={"aggregate_type": "test", "aggregate_id": "1", "x-pad": ""},
    )
    size = sum(len(piece) for piece in base.encode())
    padding = "p" * (131_072 - 8 - 12 - 100 - size)

    dead = dead_lettered_then_good_processed(
        broker,
        lambda: broker.send(
            "other.event",
            routing_key="test.misrouted",
            message_id="poison",
            properties={
                "headers": {"aggregate_type": "test", "aggregate_id": "1", "x-pad": padding}
            },
        ),
    )

    headers = dead.properties.headers or {}
    assert reason_of(dead) == "consumer 'recorder' has no handler for event type 'other.event'"
    assert "x-pad" not in headers
    assert headers["aggregate_id"] == "1"
    assert "1 headers dropped to fit one AMQP frame" in str(headers[HEADER_REWRITTEN])


def test_a_huge_header_table_goes_through_retries_within_the_frame_size(
    broker: ConsumerBroker,
) -> None:
    # As many headers as fit the broker's frame; the retry copy adds the attempt and error.
    headers = {f"x-h{n:05d}": "v" * 30 for n in range((131_072 - 8 - 12 - 400) // 44)}

    kept = headers_after_retries(broker, dict(headers))

    assert 2500 < len(kept) < len(headers)
    assert "headers dropped to fit one AMQP frame" in str(kept[HEADER_REWRITTEN])


def test_an_unexpected_error_while_decoding_dead_letters_that_message_alone(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    decode = processing.decode

    def failing_decode(spec: Any, delivery: Any) -> Any:
        if delivery.properties.message_id == "poison":
            raise ZeroDivisionError("a bug in the consumer")
        return decode(spec, delivery)

    monkeypatch.setattr("outbox.consumer.loop.decode", failing_decode)

    dead = dead_lettered_then_good_processed(broker, lambda: broker.send(message_id="poison"))

    assert reason_of(dead) == (
        f"{REASON_UNEXPECTED} decoding it: ZeroDivisionError: a bug in the consumer"
    )
    assert (dead.properties.headers or {})[HEADER_ERROR_TYPE] == "builtins.ZeroDivisionError"
    assert "Traceback" in caplog.text


def test_an_unexpected_error_while_processing_dead_letters_that_message_alone(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    process_batch = ConsumerLoop.process_batch
    process_message = ConsumerLoop.process_message

    def failing_batch(loop: ConsumerLoop, messages: Any) -> Any:
        if any(message.message_id == "poison" for message in messages):
            raise MemoryError("a bug outside the handlers, in the batch")
        return process_batch(loop, messages)

    def failing(loop: ConsumerLoop, message: Any) -> Any:
        if message.message_id == "poison":
            raise MemoryError("a bug outside the handlers")
        return process_message(loop, message)

    # The batch fails as a whole, then each message is processed alone: only the poison fails.
    monkeypatch.setattr(ConsumerLoop, "process_batch", failing_batch)
    monkeypatch.setattr(ConsumerLoop, "process_message", failing)

    dead = dead_lettered_then_good_processed(broker, lambda: broker.send(message_id="poison"))

    assert reason_of(dead).startswith(f"{REASON_UNEXPECTED} processing it: MemoryError")


def test_a_copy_that_cannot_be_sent_is_rejected_into_the_dead_letter_queue(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    republish = copies.republish

    def failing(channel: Any, queue: str, delivery: Any, **kwargs: Any) -> None:
        if delivery.properties.message_id == "poison":
            raise TypeError("cannot encode")
        republish(channel, queue, delivery, **kwargs)

    monkeypatch.setattr("outbox.consumer.loop.republish", failing)

    dead = dead_lettered_then_good_processed(
        broker, lambda: broker.send("other.event", routing_key="test.x", message_id="poison")
    )

    # Dead-lettered by the broker (basic.reject): its x-death header, not the consumer's.
    headers = dead.properties.headers or {}
    assert dead.properties.message_id == "poison"
    assert HEADER_REASON not in headers
    assert headers["x-death"][0]["reason"] == "rejected"
