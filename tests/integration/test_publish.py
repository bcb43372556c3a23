"""outbox.publish / publish_many against real PostgreSQL transactions."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.db import transaction

from outbox import (
    InvalidMessageError,
    Message,
    PayloadTooLargeError,
    TransactionRequiredError,
    publish,
    publish_many,
)
from outbox.models import OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)


class RollbackError(Exception):
    pass


def test_row_commits_with_the_transaction_and_carries_every_field() -> None:
    with transaction.atomic():
        row = publish(
            "orders.order_placed",
            {"order_id": 1},
            aggregate_type="order",
            aggregate_id=1,
            headers={"x-tenant": "a"},
        )
    stored = OutboxMessage.objects.get()
    assert stored.pk == row.pk
    assert stored.message_id == row.message_id
    assert isinstance(stored.message_id, UUID)
    assert stored.event_type == "orders.order_placed"
    assert stored.routing_key == "orders.order_placed"
    assert stored.exchange == "events"
    assert (stored.aggregate_type, stored.aggregate_id) == ("order", "1")
    assert stored.ordering_key == "order:1"
    assert stored.payload == {"order_id": 1}
    assert stored.headers == {"x-tenant": "a"}
    assert stored.status == OutboxMessage.Status.READY
    assert stored.attempts == 0
    assert stored.published_at is None
    assert stored.next_attempt_at <= datetime.now(UTC)


def test_rollback_leaves_no_row() -> None:
    def publish_then_fail() -> None:
        with transaction.atomic():
            publish("orders.order_placed", {"order_id": 1})
            raise RollbackError

    with pytest.raises(RollbackError):
        publish_then_fail()
    assert not OutboxMessage.objects.exists()


def test_routing_key_and_exchange_can_be_chosen() -> None:
    with transaction.atomic():
        row = publish("a.b", {}, routing_key="custom.key", exchange="other")
    assert (row.routing_key, row.exchange, row.ordering_key) == ("custom.key", "other", "")


def test_outside_atomic_raises_and_writes_nothing() -> None:
    with pytest.raises(TransactionRequiredError, match="REQUIRE_ATOMIC"):
        publish("orders.order_placed", {"order_id": 1})
    assert not OutboxMessage.objects.exists()


def test_outside_atomic_writes_in_autocommit_when_allowed(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "REQUIRE_ATOMIC": False}
    publish("orders.order_placed", {"order_id": 1})
    assert OutboxMessage.objects.count() == 1


def test_common_python_values_are_serialized() -> None:
    order_id = uuid4()
    with transaction.atomic():
        row = publish(
            "x.y",
            {
                "id": order_id,
                "total": Decimal("10.50"),
                "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                "nested": [{"ok": True, "none": None}],
            },
        )
    expected = {
        "id": str(order_id),
        "total": "10.50",
        "at": "2026-01-02T03:04:05Z",
        "nested": [{"ok": True, "none": None}],
    }
    assert row.payload == expected
    assert OutboxMessage.objects.get().payload == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"thing": object()}, "cannot be serialized"),
        ({"bad": float("nan")}, "cannot be serialized"),
        ({"nul": "a\x00b"}, "NUL"),
        ([1, 2], "JSON object"),
        ("text", "JSON object"),
        ({"set": {1, 2}}, "cannot be serialized"),
    ],
)
def test_bad_payloads_raise_and_write_nothing(payload: Any, message: str) -> None:
    with transaction.atomic():
        with pytest.raises(InvalidMessageError, match=message):
            publish("x.y", payload)
        assert not OutboxMessage.objects.exists()


def test_payload_over_the_limit_raises_and_writes_nothing(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PAYLOAD_BYTES": 100}
    with transaction.atomic():
        publish("x.y", {"text": "a" * 80})
        with pytest.raises(PayloadTooLargeError, match="over"):
            publish("x.y", {"text": "a" * 100})
    assert OutboxMessage.objects.count() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_type": ""}, "event_type must not be empty"),
        ({"event_type": "has space"}, "spaces"),
        ({"event_type": "x" * 256}, "255 bytes"),
        ({"event_type": 5}, "event_type must be a string"),
        ({"routing_key": "r" * 300}, "routing_key"),
        ({"exchange": "bad exchange"}, "exchange"),
        ({"aggregate_type": "order"}, "go together"),
        ({"aggregate_id": 1}, "go together"),
        ({"aggregate_type": "or:der", "aggregate_id": 1}, "aggregate_type"),
        ({"aggregate_type": "order", "aggregate_id": 1.5}, "aggregate_id"),
        ({"aggregate_type": "order", "aggregate_id": ""}, "aggregate_id"),
        ({"headers": {"aggregate_id": "x"}}, "set by the outbox"),
        ({"headers": {1: "x"}}, "header name at headers must be a non-empty string"),
        ({"headers": {"x": object()}}, r"header value at headers\['x'\] is a object"),
        ({"headers": ["x"]}, "headers must be a mapping"),
    ],
)
def test_bad_arguments_raise_a_clear_error_and_write_nothing(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"event_type": "x.y", "payload": {}} | kwargs
    with transaction.atomic():
        with pytest.raises(InvalidMessageError, match=message):
            publish(**arguments)
        assert not OutboxMessage.objects.exists()


def test_publish_many_writes_all_rows_in_one_statement(
    django_assert_num_queries: Any,
) -> None:
    messages = [
        Message("orders.order_placed", {"n": n}, aggregate_type="order", aggregate_id=n % 7)
        for n in range(50)
    ]
    with transaction.atomic(), django_assert_num_queries(1):
        rows = publish_many(messages)
    assert [row.payload["n"] for row in rows] == list(range(50)), "returned in input order"
    assert all(row.pk is not None for row in rows)
    stored = OutboxMessage.objects.order_by("position")
    assert sorted(row.payload["n"] for row in stored) == list(range(50))
    for key in {row.ordering_key for row in rows}:
        of_key = [row.payload["n"] for row in stored if row.ordering_key == key]
        assert of_key == sorted(of_key), f"{key}: one key's messages keep their order"


def test_publish_many_batches_with_overlapping_keys_do_not_deadlock() -> None:
    """Two transactions publishing the same keys in opposite orders both commit.

    A third session holds the middle key's lock (the one the insert trigger of migration
    0002_relay takes), so both writers are sure to be inside their INSERT, holding the keys
    before it, when they meet. Inserted in the callers' orders they would deadlock there.
    """
    import threading
    import time

    from django.db import connection, connections

    keys = [f"k{n:03}" for n in range(100)]
    errors: list[BaseException] = []

    def writer(order: list[str]) -> None:
        try:
            with transaction.atomic():
                publish_many(Message("x.y", {}, aggregate_type="t", aggregate_id=k) for k in order)
        except BaseException as error:  # reported below, with the thread's own error
            errors.append(error)
        finally:
            connection.close()

    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(1330992216, hashtext('t:k050'))")
            threads = [
                threading.Thread(target=writer, args=(keys,)),
                threading.Thread(target=writer, args=(keys[::-1],)),
            ]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            cursor.execute("SELECT pg_advisory_unlock(1330992216, hashtext('t:k050'))")
        for thread in threads:
            thread.join(timeout=30)
    finally:
        holder.close()
    assert errors == []
    assert OutboxMessage.objects.count() == 200


def test_publish_many_with_one_bad_message_writes_none() -> None:
    messages = [Message("ok", {"n": 1}), Message("ok", {"bad": object()}), Message("ok", {})]
    with transaction.atomic():
        with pytest.raises(InvalidMessageError, match="message 1"):
            publish_many(messages)
        assert not OutboxMessage.objects.exists()


def test_publish_many_outside_atomic_raises() -> None:
    with pytest.raises(TransactionRequiredError):
        publish_many([Message("ok", {})])
    assert not OutboxMessage.objects.exists()


def test_payload_stored_as_jsonb() -> None:
    with transaction.atomic():
        publish("x.y", {"b": 1, "a": [1, 2]})
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT jsonb_typeof(payload), payload->'a'->>1 FROM outbox_message LIMIT 1")
        assert cursor.fetchone() == ("object", "2")
    assert json.loads(json.dumps(OutboxMessage.objects.get().payload)) == {"b": 1, "a": [1, 2]}


@pytest.mark.parametrize("prepared", [True, False])
def test_both_insert_paths_write_the_same_row_and_roll_back(settings: Any, prepared: bool) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "PREPARED_INSERT": prepared}
    for _ in range(3):  # the statement is prepared on first use and reused after
        with transaction.atomic():
            row = publish("x.y", {"n": 1}, aggregate_type="t", aggregate_id=1)
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert (stored.message_id, stored.payload, stored.position) == (
        row.message_id,
        {"n": 1},
        row.position,
    )
    assert row.position > 0

    def publish_then_fail() -> None:
        with transaction.atomic():
            publish("x.y", {"n": 2})
            raise RollbackError

    with pytest.raises(RollbackError):
        publish_then_fail()
    assert OutboxMessage.objects.count() == 3


def test_a_database_error_in_the_prepared_insert_is_djangos_and_rolls_back() -> None:
    from django.db import IntegrityError

    from outbox.writer import Message, _insert, _prepare

    with transaction.atomic():
        first = publish("x.y", {})
    row, payload_json, headers_json = _prepare(Message("x.y", {}))
    row.message_id = first.message_id  # a duplicate of the unique message id

    def insert_duplicate() -> None:
        with transaction.atomic():
            _insert(row, "default", payload_json=payload_json, headers_json=headers_json)

    with pytest.raises(IntegrityError):
        insert_duplicate()
    assert OutboxMessage.objects.count() == 1
