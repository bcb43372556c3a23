"""``x-outbox-position`` (issue 12, item 3): every keyed message carries its place in its
ordering key's commit order, the consumer exposes it as ``IncomingMessage.position``."""

from __future__ import annotations

import pytest
from django.db import transaction

from outbox import publish
from outbox.consumer.loop import consume
from outbox.exceptions import InvalidMessageError
from outbox.relay import Relay
from outbox.relay.publishers import RabbitMQPublisher
from outbox.wire import HEADER_POSITION
from tests.consumer.conftest import ConsumerBroker
from tests.consumer.handlers import RECORDER
from tests.consumer.test_batches import record_batches
from tests.relay.conftest import fast_settings

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_relay_sends_positions_in_commit_order_and_the_consumer_reads_them(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_batches(monkeypatch)
    with transaction.atomic():
        first = publish("test.moved", {"step": 1}, aggregate_type="parcel", aggregate_id="p1")
    with transaction.atomic():
        other = publish("test.moved", {"step": 1}, aggregate_type="parcel", aggregate_id="p2")
        second = publish("test.moved", {"step": 2}, aggregate_type="parcel", aggregate_id="p1")
        unkeyed = publish("test.noted", {"step": 3})
    relay = Relay(RabbitMQPublisher(), settings=fast_settings())
    try:
        assert relay.drain().published == 4
    finally:
        relay.close()

    assert consume(RECORDER, max_messages=4, until_idle=5) == 4

    received = {m.message_id: m for batch in batches for m in batch}
    positions = {row: received[str(row.message_id)].position for row in (first, second, other)}
    assert positions == {first: first.position, second: second.position, other: other.position}
    assert first.position < second.position  # committed later, in the same aggregate
    assert received[str(unkeyed.message_id)].position is None
    assert HEADER_POSITION not in received[str(first.message_id)].headers  # framework's own


def test_callers_cannot_set_the_position_header() -> None:
    with pytest.raises(InvalidMessageError, match="x-outbox-"), transaction.atomic():
        publish("test.moved", {}, headers={HEADER_POSITION: 1})
