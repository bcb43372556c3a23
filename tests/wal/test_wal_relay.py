"""The WAL relay in this process (one JVM for the module): commit order, the wire format
compared byte for byte with the polling relay, the sweep, one relay per slot."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from django.db import connection, transaction

from outbox import Message, publish, publish_many
from outbox.models import OutboxMessage
from outbox.relay import Relay
from tests.broker import BoundQueue, Received
from tests.relay.conftest import consume, fast_settings
from tests.wal.conftest import Slot, drop_slot, requires_wal, running, wait_for, wal_relay

pytestmark = [requires_wal, pytest.mark.django_db(transaction=True)]


def write_transactions(transactions: int, per_transaction: int, keys: int = 3) -> list[str]:
    """Commit ``transactions`` transactions one after the other, rows spread over ``keys``
    orders; the message ids in commit order."""
    ids: list[str] = []
    for t in range(transactions):
        with transaction.atomic():
            rows = publish_many(
                Message(
                    "orders.changed",
                    {"t": t, "n": n},
                    aggregate_type="order",
                    aggregate_id=(t + n) % keys,
                )
                for n in range(per_transaction)
            )
        ids += [str(row.message_id) for row in sorted(rows, key=lambda row: row.position)]
    return ids


def publish_and_roll_back() -> None:
    with transaction.atomic():
        publish("orders.changed", {"rolled": "back"})
        raise RuntimeError("roll back")


def all_published() -> bool:
    return not OutboxMessage.objects.exclude(status=OutboxMessage.Status.PUBLISHED).exists()


def test_committed_rows_are_published_in_commit_order_and_marked(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    with running(wal_relay(wal_slot), wal_slot):
        written = write_transactions(20, 5)
        with pytest.raises(RuntimeError):
            publish_and_roll_back()
        written += write_transactions(1, 1)
        received = consume(exchange, len(written), timeout=30)
        wait_for(all_published, 10, "the rows to be marked published")
        received = exchange.drain(quiet_seconds=0.3)  # everything, with anything late
    assert [message.properties.message_id for message in received] == written
    assert all(json.loads(message.body) != {"rolled": "back"} for message in received)


def test_the_wire_format_is_the_polling_relays_byte_for_byte(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    with running(wal_relay(wal_slot), wal_slot):
        with transaction.atomic():
            publish(
                "orders.placed",
                {"order": 1, "text": "é ☃ \u2028", "nested": {"b": [1, 2.5, None, True]}},
                aggregate_type="order",
                aggregate_id="42",
                headers={"x-tenant": "a", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            )
            publish("orders.no_aggregate", {"list": [1, "two"]}, routing_key="custom.key")
            publish("orders.empty_headers", {}, aggregate_type="order", aggregate_id="42")
        by_wal = consume(exchange, 3)
        wait_for(all_published, 10, "the rows to be marked published")
    assert len(by_wal) == 3
    # The same rows again, through the polling relay (a replay puts them back to ready; the
    # log never brings an UPDATE).
    OutboxMessage.objects.update(status=OutboxMessage.Status.READY, published_at=None)
    exchange.received.clear()
    relay = Relay(settings=fast_settings())
    try:
        assert relay.drain().published == 3
    finally:
        relay.close()
    by_polling = consume(exchange, 3)
    assert [wire(message) for message in by_wal] == [wire(message) for message in by_polling]
    assert (by_wal[0].properties.headers or {})["x-tenant"] == "a"


def wire(message: Received) -> tuple[bytes, str, dict[str, Any]]:
    properties = dict(vars(message.properties))
    return message.body, message.routing_key, properties


def test_rows_older_than_the_slot_and_replayed_rows_are_swept(
    exchange: BoundQueue, wal_slot: Slot, caplog: pytest.LogCaptureFixture
) -> None:
    before = write_transactions(2, 3)  # no slot yet: the log will never bring these
    caplog.set_level(logging.INFO, logger="outbox.relay")
    with running(wal_relay(wal_slot, sweep_interval=0.5, sweep_age=0.5), wal_slot):
        received = consume(exchange, len(before), timeout=30)
        assert sorted(str(message.properties.message_id) for message in received) == sorted(before)
        assert any("rows older than the slot" in line for line in caplog.messages)
        wait_for(all_published, 10, "the old rows to be marked published")
        exchange.received.clear()
        replayed = OutboxMessage.objects.get(message_id=before[1])
        OutboxMessage.objects.filter(pk=replayed.pk).update(status="ready", published_at=None)
        [again] = consume(exchange, 1, timeout=30)
        assert again.properties.message_id == before[1]
        wait_for(all_published, 10, "the replayed row to be marked published")


def test_a_second_relay_on_the_slot_stands_by_and_takes_over(
    exchange: BoundQueue, wal_slot: Slot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outbox.relay")
    second = wal_relay(wal_slot, name="second")
    stop_second = threading.Event()
    with running(wal_relay(wal_slot, name="first"), wal_slot):
        thread = threading.Thread(target=second.run, args=(stop_second.is_set,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: "standing by" in caplog.text, 15, "the second relay to stand by")
            first_rows = write_transactions(1, 3)
            consume(exchange, 3)
            assert not second.streaming.is_set()
        except BaseException:
            stop_second.set()
            raise
    try:
        wait_for(second.streaming.is_set, 30, "the second relay to take over")
        wait_for(wal_slot.active, 30, "the second relay to read the slot")
        later = write_transactions(1, 3)
        received = consume(exchange, 6, timeout=30)
    finally:
        stop_second.set()
        thread.join(60)
    assert "took over slot" in caplog.text
    ids = [message.properties.message_id for message in received]
    assert ids[:3] == first_rows
    assert set(later) <= set(ids)


def test_offsets_live_in_postgresql_one_row_set_per_slot(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    with running(wal_relay(wal_slot), wal_slot):
        write_transactions(1, 2)
        consume(exchange, 2)
        wait_for(all_published, 10, "the rows to be marked published")

        def stored() -> list[tuple[str, str]]:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT offset_key, offset_val FROM outbox_wal_offsets"
                    " WHERE offset_key LIKE %s",
                    [f'["outbox_wal.{wal_slot.slot}",%'],
                )
                return list(cursor.fetchall())

        wait_for(lambda: bool(stored()), 10, "Debezium to store its offset")
    [(key, value)] = stored()
    assert json.loads(key)[1] == {"server": f"outbox_wal.{wal_slot.slot}"}
    assert "lsn" in json.loads(value)


def test_a_slot_created_again_does_not_resume_from_the_old_slots_offsets(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    with running(wal_relay(wal_slot), wal_slot):
        write_transactions(1, 2)
        consume(exchange, 2)
        wait_for(all_published, 10, "the rows to be marked published")
    drop_slot(wal_slot.slot)  # retired by hand; its offsets stay behind
    with running(wal_relay(wal_slot), wal_slot):
        later = write_transactions(1, 2)
        received = consume(exchange, 4, timeout=30)
    assert [str(message.properties.message_id) for message in received[2:]] == later


def other_sessions() -> int:
    """PostgreSQL sessions on the test database other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def test_batch_after_batch_the_relay_keeps_the_same_database_sessions(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    # Each batch used to open a session of its own (JPype gives every call from Java a new
    # Python thread state, so Django's per-thread connection was new each time) and never
    # close it: at tens of batches a second the server ran out of clients within seconds
    # and Debezium restarted, which stalled the relay for one to two seconds each time.
    relay = wal_relay(wal_slot)
    with running(relay, wal_slot):
        for round_ in range(5):
            write_transactions(1, 1)
            consume(exchange, round_ + 1)
        settled = other_sessions()
        for round_ in range(5, 45):
            write_transactions(1, 1)  # one row, then wait for it: a batch each
            consume(exchange, round_ + 1)
        assert relay.progress.batches >= 40
        assert other_sessions() <= settled
