"""outbox.publish / publish_many against real PostgreSQL transactions."""

import asyncio
import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pika.exceptions
import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.test import RequestFactory
from pika.spec import BasicProperties

from outbox import (
    InvalidMessageError,
    Message,
    PayloadTooLargeError,
    TransactionRequiredError,
    publish,
    publish_many,
)
from outbox.models import OutboxMessage
from outbox.wire import check_header_value

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
        # Lone surrogates and NUL: InvalidMessageError, not UnicodeEncodeError or DataError.
        ({"payload": {"text": "half \ud800 pair"}}, "payload .*lone surrogate"),
        ({"payload": {"\udc80": 1}}, "payload .*lone surrogate"),
        ({"event_type": "x.\ud800"}, "event_type holds a lone surrogate"),
        ({"routing_key": "r.\ud800"}, "routing_key holds a lone surrogate"),
        ({"aggregate_type": "order", "aggregate_id": "\ud800"}, "aggregate_id holds a lone"),
        ({"aggregate_type": "order", "aggregate_id": "a\x00b"}, "aggregate_id .*NUL"),
        ({"aggregate_type": "or\x00der", "aggregate_id": 1}, "aggregate_type"),
        ({"event_type": "x\x00y"}, "event_type .*control characters"),
        ({"routing_key": "x\x00y"}, "routing_key .*control characters"),
        ({"payload": {"text": "\x00"}}, "NUL"),
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
    0001_initial takes), so both writers are sure to be inside their INSERT, holding the keys
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


@pytest.mark.parametrize("prepared", [True, False])
def test_the_insert_is_a_server_side_prepared_statement_only_when_asked(
    settings: Any, prepared: bool
) -> None:
    # Django opens psycopg connections with prepare_threshold=None, under which psycopg
    # ignores execute(prepare=True): the INSERT was parsed and planned in every transaction.
    from django.db import connection

    settings.OUTBOX = {**settings.OUTBOX, "PREPARED_INSERT": prepared}
    with transaction.atomic():
        publish("x.y", {"n": 1})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements"
            " WHERE statement LIKE '%%INSERT INTO outbox_message%%'"
        )
        assert cursor.fetchone() == (1 if prepared else 0,)
    # The application's own queries stay unprepared: the threshold is lifted for one statement.
    assert connection.connection.prepare_threshold is None


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


# --- what AMQP can carry (issue 10, items 1, 9, 10) ---------------------------------------

_LONG_KEY = "é" * 128  # 128 characters, 256 UTF-8 bytes: one byte over AMQP's short string


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"price": 1.5}, r"headers\['price'\] is a float"),
        ({"n": {"deep": [1, 2.0]}}, r"headers\['n'\]\['deep'\]\[1\] is a float"),
        ({"big": 2**63}, r"headers\['big'\] is outside AMQP's signed 64-bit"),
        ({"small": -(2**63) - 1}, r"headers\['small'\] is outside AMQP's signed 64-bit"),
        ({"n": {_LONG_KEY: 1}}, r"at headers\['n'\] is longer than 255 bytes"),
        ({_LONG_KEY: 1}, "longer than 255 bytes"),
        ({"n": [{"k": b"raw"}]}, r"headers\['n'\]\[0\]\['k'\] is a bytes"),
        ({"n": {1: "x"}}, r"header name at headers\['n'\] must be a non-empty string"),
        ({"x-outbox-attempts": 99}, "reserved for the outbox"),
        ({"X-Outbox-Position": 1}, "reserved for the outbox"),
        ({"text": "half \ud800 pair"}, "lone surrogate"),
        ({"half \udfff": "x"}, "lone surrogate"),
        ({"text": "nul \x00"}, "NUL"),
    ],
)
def test_headers_amqp_cannot_carry_are_refused_and_nothing_is_written(
    headers: dict[str, Any], message: str
) -> None:
    with transaction.atomic():
        with pytest.raises(InvalidMessageError, match=message):
            publish("x.y", {}, headers=headers)
        with pytest.raises(InvalidMessageError, match=f"message 1: .*{message}"):
            publish_many([Message("x.y", {}), Message("x.y", {}, headers=headers)])
        assert not OutboxMessage.objects.exists()


def test_every_header_value_publish_accepts_is_encodable_by_pika() -> None:
    headers = {
        "limits": [2**63 - 1, -(2**63), 0, True, None, "text"],
        "nested": {"k" * 255: {"list": [{"a": 1}]}},
        "when": datetime(2026, 1, 2, tzinfo=UTC),
        "amount": Decimal("1.50"),
        "x-outboxed": "a prefix look-alike is the caller's",
    }
    with transaction.atomic():
        publish("x.y", {}, headers=headers)
    stored = OutboxMessage.objects.get().headers
    assert stored["when"] == "2026-01-02T00:00:00Z"
    assert stored["amount"] == "1.50"
    assert stored["limits"] == headers["limits"]
    # What the relay does with them: raises if pika could not send these headers.
    assert BasicProperties(headers=stored).encode()


def test_the_header_rule_refuses_what_pika_refuses() -> None:

    for value in (1.5, 2**63, {_LONG_KEY: 1}):
        with pytest.raises(InvalidMessageError):
            check_header_value("h", value)
        with pytest.raises(
            (
                pika.exceptions.UnsupportedAMQPFieldException,
                pika.exceptions.ShortStringTooLong,
                struct.error,
            )
        ):
            BasicProperties(headers={"h": value}).encode()


def test_a_literal_backslash_u0000_text_is_accepted_and_round_trips() -> None:
    text = "C:\\u0000 is six characters, not a NUL; \\\\u0000 neither"
    with transaction.atomic():
        row = publish("x.y", {"text": text, "\\u0000": 1}, headers={"note": text})
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.payload == {"text": text, "\\u0000": 1}
    assert stored.headers == {"note": text}
    # A NUL after an escaped backslash is still a NUL.
    with transaction.atomic(), pytest.raises(InvalidMessageError, match="NUL"):
        publish("x.y", {"text": "\\\x00"})


def test_numbers_are_normalised_by_jsonb_exactly_as_documented() -> None:
    # docs/concepts.md, "How numbers are stored": jsonb keeps numeric values, not their text.
    payload = {
        "exponent_integral": 1e17,
        "huge": 1e300,
        "negative_zero": -0.0,
        "float_integral": 1.0,
        "small": 1e-7,
        "fraction": 1.5,
        "big_int": 2**70,
        "trailing_zeros": Decimal("1.500"),
    }
    with transaction.atomic():
        publish("x.y", payload)
    stored = OutboxMessage.objects.get().payload
    as_read = {name: (value, type(value).__name__) for name, value in stored.items()}
    assert as_read == {
        "exponent_integral": (10**17, "int"),  # 1e+17 had an exponent: an integer now
        "huge": (10**300, "int"),
        "negative_zero": (0.0, "float"),
        "float_integral": (1.0, "float"),
        "small": (1e-7, "float"),
        "fraction": (1.5, "float"),
        "big_int": (2**70, "int"),
        "trailing_zeros": ("1.500", "str"),
    }
    assert str(stored["negative_zero"]) == "0.0"  # the sign of zero is lost


# --- async views (issue 11, point 6) ------------------------------------------------------


def test_publish_in_an_async_context_says_to_use_sync_to_async() -> None:
    async def async_view() -> None:
        publish("orders.order_placed", {"order_id": 1})

    with pytest.raises(TransactionRequiredError, match="async context") as raised:
        asyncio.run(async_view())
    assert "sync_to_async" in str(raised.value)
    assert "transaction.atomic()" in str(raised.value)
    assert not OutboxMessage.objects.exists()


def _docs_code_block(page: str, heading: str) -> str:
    """The first Python code block after ``heading`` in ``docs/<page>``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_async_views_example_of_the_docs_publishes_through_sync_to_async() -> None:
    namespace: dict[str, Any] = {}
    exec(_docs_code_block("concepts.md", "## Async views"), namespace)

    async def serve() -> int:
        try:
            response = await namespace["place_order"](RequestFactory().post("/orders/7"), 7)
            return int(response.status_code)
        finally:
            # sync_to_async ran the unit of work in its own thread, on its own connection.
            await sync_to_async(connections.close_all)()

    assert asyncio.run(serve()) == 201
    row = OutboxMessage.objects.get()
    assert (row.event_type, row.ordering_key, row.payload) == (
        "orders.order_placed",
        "order:7",
        {"order_id": 7},
    )
