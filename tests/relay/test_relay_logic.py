"""The relay's claim / settle rules against real PostgreSQL, with the in-memory publisher."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from outbox import Message, publish, publish_many
from outbox.exceptions import RelayError
from outbox.models import OutboxMessage
from outbox.relay.publishers import InMemoryPublisher
from tests.relay.conftest import memory_relay

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxMessage.Status


def write(count: int, key: str | None = "1", event_type: str = "orders.placed") -> None:
    with transaction.atomic():
        publish_many(
            Message(
                event_type,
                {"n": n},
                aggregate_type="order" if key else None,
                aggregate_id=key,
            )
            for n in range(count)
        )


def test_positions_follow_insertion_within_a_transaction() -> None:
    with transaction.atomic():
        first = publish("a.b", {}, aggregate_type="order", aggregate_id=1)
        rest = publish_many([Message("a.b", {}, aggregate_type="order", aggregate_id=1)] * 3)
    positions = [first.position, *(row.position for row in rest)]
    assert positions == sorted(positions)
    assert len(set(positions)) == 4
    stored = list(OutboxMessage.objects.order_by("id").values_list("position", flat=True))
    assert stored == positions


def test_a_claim_takes_each_keys_rows_in_position_order() -> None:
    write(3, key="1")
    write(2, key="2")
    write(2, key=None)
    relay = memory_relay()
    publisher = relay.publisher
    assert isinstance(publisher, InMemoryPublisher)
    result = relay.publish_batch()
    # Every row is publishable: key 1's three, key 2's two and both keyless rows, sent in
    # position order (write order here).
    assert result.claimed == 7
    assert [m.body for m in publisher.published] == [
        b'{"n": %d}' % n for n in (0, 1, 2, 0, 1, 0, 1)
    ]
    assert OutboxMessage.objects.filter(status=Status.READY).count() == 0


def test_a_leased_row_is_not_claimed_twice_and_blocks_its_key() -> None:
    write(2, key="1")
    write(1, key="2")
    write(1, key="1")
    from outbox.relay.store import store_for

    store = store_for()

    first = store.claim(owner="a", limit=10, lease_seconds=30)
    second = store.claim(owner="b", limit=10, lease_seconds=30)
    assert len(first) == 4
    assert second == [], "every row is leased, and key 1's leased head blocks later rows"


def test_an_expired_lease_makes_the_rows_claimable_again() -> None:
    write(1)
    from outbox.relay.store import store_for

    store = store_for()

    [claimed] = store.claim(owner="crashed", limit=10, lease_seconds=30)
    assert store.claim(owner="other", limit=10, lease_seconds=30) == []
    OutboxMessage.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    [again] = store.claim(owner="other", limit=10, lease_seconds=30)
    assert again.message_id == claimed.message_id
    assert OutboxMessage.objects.get().lease_owner == "other"


def test_refused_rows_use_attempts_then_fail_and_block_only_their_key(settings: Any) -> None:
    # One row per key in flight: the row behind a refused one is not even sent.
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PER_KEY": 1}
    write(2, key="poison", event_type="nowhere.x")
    write(3, key="fine")
    publisher = InMemoryPublisher(bindings={"events": ["orders.#"]})
    relay = memory_relay(publisher, max_attempts=3)
    for _ in range(5):
        relay.drain()
    poison = list(OutboxMessage.objects.filter(ordering_key="order:poison").order_by("position"))
    assert [row.status for row in poison] == [Status.FAILED, Status.READY]
    assert poison[0].attempts == 3
    assert "unroutable" in poison[0].last_error
    assert poison[1].attempts == 0, "the row behind a failed one is never tried"
    fine = OutboxMessage.objects.filter(ordering_key="order:fine")
    assert {row.status for row in fine} == {Status.PUBLISHED}


def test_retries_wait_for_the_backoff() -> None:
    write(1, key="1", event_type="nowhere.x")
    relay = memory_relay(
        InMemoryPublisher(bindings={"events": []}), backoff_seconds=60, backoff_max_seconds=600
    )
    assert relay.drain().retried == 1
    row = OutboxMessage.objects.get()
    assert row.attempts == 1
    # Equal jitter: between half and all of 60 s.
    delay = (row.next_attempt_at - timezone.now()).total_seconds()
    assert 25 < delay <= 60
    assert relay.drain().batches == 1, "not due yet: nothing claimed"


def test_unroutable_can_be_recorded_as_published_with_a_trace() -> None:
    write(1, key="1", event_type="nowhere.x")
    relay = memory_relay(InMemoryPublisher(bindings={"events": []}), on_unroutable="record")
    assert relay.drain().published == 1
    row = OutboxMessage.objects.get()
    assert row.status == Status.PUBLISHED
    assert "unroutable" in row.last_error
    assert row.attempts == 0


def test_a_broker_outage_releases_rows_without_using_attempts() -> None:
    write(3, key=None)
    publisher = InMemoryPublisher()
    publisher.broker_down = True
    relay = memory_relay(publisher)
    result = relay.drain()
    assert result.broker_error is not None
    assert result.published == 0
    rows = list(OutboxMessage.objects.all())
    assert {(r.status, r.attempts, r.lease_owner) for r in rows} == {(Status.READY, 0, "")}
    publisher.broker_down = False
    assert relay.drain().published == 3


def test_the_wire_message_carries_the_row(settings: Any) -> None:
    with transaction.atomic():
        row = publish(
            "orders.placed",
            {"order_id": 7, "total": "9.50"},
            aggregate_type="order",
            aggregate_id=7,
            headers={"traceparent": "00-abc-def-01"},
            routing_key="orders.eu.placed",
        )
    publisher = InMemoryPublisher()
    memory_relay(publisher).drain()
    [sent] = publisher.published
    assert sent.message_id == str(row.message_id)
    assert (sent.exchange, sent.routing_key, sent.event_type) == (
        "events",
        "orders.eu.placed",
        "orders.placed",
    )
    assert sent.headers == {
        "traceparent": "00-abc-def-01",
        "aggregate_type": "order",
        "aggregate_id": "7",
        "x-outbox-position": row.position,
    }
    assert sent.timestamp == int(row.created_at.timestamp())
    import json

    assert json.loads(sent.body) == {"order_id": 7, "total": "9.50"}


def test_the_relay_refuses_to_run_inside_a_transaction() -> None:
    relay = memory_relay()
    with pytest.raises(RelayError, match=r"transaction\.atomic"), transaction.atomic():
        relay.publish_batch()


def test_settings_are_validated(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from outbox.relay import RelaySettings

    settings.OUTBOX = {**settings.OUTBOX, "ON_UNROUTABLE": "ignore"}
    with pytest.raises(ImproperlyConfigured, match="ON_UNROUTABLE"):
        RelaySettings.from_settings()
    settings.OUTBOX = {**settings.OUTBOX, "ON_UNROUTABLE": "retry", "BATCH_SIZE": 0}
    with pytest.raises(ImproperlyConfigured, match="BATCH_SIZE"):
        RelaySettings.from_settings()


def test_logs_and_metrics_report_counts_and_message_ids(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outbox.operations import metrics

    reported: dict[str, list[float]] = {"published": [], "retried": [], "failed": [], "latency": []}
    monkeypatch.setattr(metrics, "messages_published", reported["published"].append)
    monkeypatch.setattr(metrics, "messages_retried", reported["retried"].append)
    monkeypatch.setattr(metrics, "messages_failed", reported["failed"].append)
    monkeypatch.setattr(metrics, "publish_latency", reported["latency"].append)
    write(2, key=None)
    write(1, key="poison", event_type="nowhere.x")
    relay = memory_relay(InMemoryPublisher(bindings={"events": ["orders.#"]}), max_attempts=2)
    with caplog.at_level(logging.DEBUG, logger="outbox.relay"):
        relay.drain()
        relay.drain()
    events = {record.__dict__["event"]: record for record in caplog.records}
    assert set(events) == {"claim", "publish", "retry", "fail", "first_unroutable"}
    good_ids = {
        str(m)
        for m in OutboxMessage.objects.filter(ordering_key="").values_list("message_id", flat=True)
    }
    assert set(events["publish"].__dict__["message_ids"]) == good_ids
    assert events["publish"].__dict__["count"] == 2
    poison_id = str(OutboxMessage.objects.get(ordering_key="order:poison").message_id)
    assert events["fail"].__dict__["message_ids"] == [poison_id]
    assert "unroutable" in events["fail"].getMessage()
    assert reported["published"] == [2]
    assert (reported["retried"], reported["failed"]) == ([1], [1])
    assert len(reported["latency"]) == 2
    assert all(0 <= seconds < 60 for seconds in reported["latency"])


def test_the_listener_wakes_on_commit_and_times_out_otherwise() -> None:
    from outbox.relay.listener import ReadyListener

    listener = ReadyListener()
    try:
        assert listener.wait(0.05) is False
        write(1)
        assert listener.wait(5) is True
        assert listener.wait(0.05) is False, "one commit, one wake-up"

        class Abort(Exception):
            pass

        def write_then_roll_back() -> None:
            with transaction.atomic():
                publish("orders.placed", {})
                raise Abort

        with pytest.raises(Abort):
            write_then_roll_back()
        assert listener.wait(0.2) is False, "a rollback notifies nobody"
    finally:
        listener.close()


def test_log_lines_count_messages_in_the_right_form(caplog: pytest.LogCaptureFixture) -> None:
    write(1, key=None)
    with caplog.at_level(logging.INFO, logger="outbox.relay"):
        memory_relay().drain()
        write(3, key=None)
        memory_relay().drain()
    lines = [
        record.getMessage() for record in caplog.records if record.__dict__["event"] == "publish"
    ]
    assert lines == ["published 1 message", "published 3 messages"]


def test_broker_outage_warnings_name_the_broker_but_not_the_password(
    caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    settings.OUTBOX = {
        **settings.OUTBOX,
        "BROKER_URL": "amqp://app:s3cret@broker.internal:5673/shop",
    }
    write(2, key=None)
    publisher = InMemoryPublisher()
    publisher.broker_down = True
    relay = memory_relay(publisher)

    def backing_off() -> bool:  # stop once the first backoff has started
        return any(record.__dict__.get("event") == "backoff" for record in caplog.records)

    with caplog.at_level(logging.WARNING, logger="outbox.relay"):
        relay.run(backing_off)
    warnings = [record.getMessage() for record in caplog.records]
    assert any(
        line.startswith("RabbitMQ at broker.internal:5673 (vhost 'shop') unavailable (")
        and "retrying in" in line
        for line in warnings
    ), warnings
    assert any(
        line.startswith(
            "2 messages released with attempts unchanged, RabbitMQ at broker.internal:5673"
        )
        for line in warnings
    ), warnings
    assert not any("s3cret" in line or "app:" in line for line in warnings)


def test_a_database_error_while_batches_are_in_flight_loses_and_resends_nothing() -> None:
    from django.db import DatabaseError

    from outbox.relay import Relay
    from outbox.relay.postgresql import PostgreSQLStore
    from outbox.relay.store import RetryPolicy
    from tests.relay.conftest import fast_settings

    class MarkFailsOnce(PostgreSQLStore):
        failed = False

        def mark_published(self, ids: Any) -> int:
            if not self.failed:
                self.failed = True
                raise DatabaseError("connection lost while marking")
            return super().mark_published(ids)

    write(10, key=None)
    publisher = InMemoryPublisher()
    store = MarkFailsOnce("default", retry=RetryPolicy(3, 0, 0))
    # Batches of 2 are full batches: the drain runs pipelined, on the database thread.
    relay = Relay(publisher, store=store, settings=fast_settings(batch_size=2))
    try:
        with pytest.raises(DatabaseError, match="while marking"):
            relay.drain()
        assert relay._unrecorded, "the confirms the database did not take are kept"
        relay.drain()
    finally:
        relay.close()

    sent = [message.message_id for message in publisher.published]
    assert len(sent) == len(set(sent)) == 10, "every row sent once, none sent again"
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.PUBLISHED}
    assert not relay._unrecorded
