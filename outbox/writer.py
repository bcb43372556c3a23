"""``publish()``: write integration events to the outbox in the caller's transaction.

Everything is checked before anything is written, so a bad message raises at the call and
leaves nothing behind, in ``publish_many`` too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db import connections, router, transaction

from outbox import conf, kick, tracing, wire
from outbox.common.database import fetch_prepared, is_postgresql
from outbox.common.jsontext import encode
from outbox.exceptions import InvalidMessageError, PayloadTooLargeError, TransactionRequiredError
from outbox.models import OutboxMessage
from outbox.relay.postgresql import queries

_EXCHANGE_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]*$")
RESERVED_HEADERS = frozenset({wire.AGGREGATE_TYPE_HEADER, wire.AGGREGATE_ID_HEADER})
# Header leaves the JSON encoding turns into strings (OutboxJSONEncoder), so AMQP gets text.
_STRING_ENCODED_HEADER_TYPES: tuple[type, ...] = (dt.date, dt.time, dt.timedelta, Decimal, UUID)

AggregateId = str | int | UUID
# Distinct ordering keys a transaction locks one by one before the insert trigger of
# migration 0001_initial moves it to bucket locks (the trigger has the same number).
ORDER_KEY_LOCKS = 32


@dataclass(frozen=True)
class Message:
    """One integration event for ``publish_many``; the fields mean what ``publish``'s do."""

    event_type: str
    payload: Mapping[str, Any]
    aggregate_type: str | None = None
    aggregate_id: AggregateId | None = None
    headers: Mapping[str, Any] | None = None
    routing_key: str | None = None
    exchange: str | None = None


def publish(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    aggregate_type: str | None = None,
    aggregate_id: AggregateId | None = None,
    headers: Mapping[str, Any] | None = None,
    routing_key: str | None = None,
    exchange: str | None = None,
    using: str | None = None,
) -> OutboxMessage:
    """Write one integration event to the outbox, in the current transaction, and return it.

    The row commits or rolls back with the caller's transaction; the relay publishes it to
    RabbitMQ only once committed. ``payload`` is a JSON object (a mapping; datetime, Decimal
    and UUID values are serialized). ``aggregate_type`` and ``aggregate_id`` together name
    the ordering key: messages of one aggregate reach the broker in commit order.
    ``routing_key`` defaults to ``event_type`` and ``exchange`` to ``OUTBOX["EXCHANGE"]``.

    Raises ``TransactionRequiredError`` outside ``transaction.atomic`` (unless
    ``OUTBOX["REQUIRE_ATOMIC"]`` is False) and ``InvalidMessageError`` (or its subclass
    ``PayloadTooLargeError``) for bad input, including header values AMQP cannot carry
    (``outbox.wire.check_header_value``) and names with the reserved ``x-outbox-`` prefix; in
    every case nothing is written.

    From async code (an async view), run the unit of work in a thread, in one transaction::

        def place_order_now(order_id):
            with transaction.atomic():
                publish("orders.order_placed", {"order_id": order_id})

        await sync_to_async(place_order_now)(order_id)

    Called on a running event loop, ``publish()`` raises ``TransactionRequiredError`` saying so.
    """
    message = Message(
        event_type=event_type,
        payload=payload,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        headers=headers,
        routing_key=routing_key,
        exchange=exchange,
    )
    row, payload_json, headers_json = _prepare(message)
    alias = _writable_alias(using)
    _insert(row, alias, payload_json=payload_json, headers_json=headers_json)
    _kick_relay_after_commit(alias)
    return row


def publish_many(messages: Iterable[Message], *, using: str | None = None) -> list[OutboxMessage]:
    """Write many integration events in one INSERT statement and return the rows, in order.

    All messages are checked first: if any is invalid, ``InvalidMessageError`` names its
    position and nothing is written. Rows are inserted grouped by ordering key, in the order
    of the keys' lock buckets (the messages of one key keep their order), so their locks are
    always taken in the same order. Any number of aggregates fits in one transaction.
    """
    rows = []
    for position, message in enumerate(messages):
        if not isinstance(message, Message):
            raise InvalidMessageError(
                f"publish_many() takes outbox.Message objects; item {position} is {message!r}"
            )
        try:
            rows.append(build_row(message))
        except InvalidMessageError as error:
            raise type(error)(f"message {position}: {error}") from error
    alias = _writable_alias(using)
    if rows:
        # The insert trigger locks each ordering key (or its bucket) until commit. Taking the
        # locks in one global order (bucket, then key; stable, so a key's own rows keep their
        # order) means two batches with overlapping keys wait for each other instead of
        # deadlocking (migration 0001_initial explains the two levels).
        if is_postgresql(alias) and len({row.ordering_key for row in rows}) > ORDER_KEY_LOCKS:
            _lock_buckets_from_now_on(alias)
        OutboxMessage.objects.using(alias).bulk_create(sorted(rows, key=_lock_order))
        _kick_relay_after_commit(alias)
    return rows


def _lock_buckets_from_now_on(alias: str) -> None:
    """Have the insert trigger lock buckets, not keys, for the rest of this transaction.

    The trigger switches by itself after ``ORDER_KEY_LOCKS`` keys, but only at a bucket boundary
    (migration 0001_initial says why), and a sorted batch of many keys can have hundreds in
    one bucket; switching before the batch keeps it at one lock per bucket.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT set_config('outbox.order_locks', 'buckets', true)")


def order_lock_bucket(ordering_key: str) -> int:
    """The lock bucket of ``ordering_key`` (0-255), as the insert trigger computes it
    (``outbox_order_lock_bucket``: the first byte of the key's MD5)."""
    return hashlib.md5(ordering_key.encode(), usedforsecurity=False).digest()[0]


def _lock_order(row: OutboxMessage) -> tuple[int, str]:
    key = row.ordering_key
    return (order_lock_bucket(key) if key else -1, key)


def build_row(message: Message) -> OutboxMessage:
    """Validate ``message`` and return its unsaved ``OutboxMessage``."""
    return _prepare(message)[0]


def _prepare(message: Message) -> tuple[OutboxMessage, str, str]:
    """Validate ``message``; return its unsaved row and the JSON texts of payload and headers.

    The texts were produced by the validation and are what the INSERT sends, so ``publish()``
    encodes each value once.
    """
    event_type = _short_string("event_type", message.event_type)
    routing_key = _short_string(
        "routing_key", event_type if message.routing_key is None else message.routing_key
    )
    exchange = conf.get_str("EXCHANGE") if message.exchange is None else message.exchange
    if not isinstance(exchange, str) or not _EXCHANGE_PATTERN.match(exchange):
        raise InvalidMessageError(
            f"exchange must be a string of letters, digits, '-', '_', '.', ':'; got {exchange!r}"
        )
    _short_string("exchange", exchange, allow_empty=True)
    aggregate_type, aggregate_id = wire.check_aggregate(
        message.aggregate_type, message.aggregate_id
    )
    payload, payload_json = _payload(message.payload)
    headers, headers_json = _headers(message.headers)
    row = OutboxMessage(
        event_type=event_type,
        routing_key=routing_key,
        exchange=exchange,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        ordering_key=f"{aggregate_type}:{aggregate_id}" if aggregate_type else "",
        payload=payload,
        headers=headers,
    )
    return row, payload_json, headers_json


def _insert(row: OutboxMessage, alias: str, *, payload_json: str, headers_json: str) -> None:
    """INSERT ``row`` with the named query ``insert_message`` and fill in its id and position.

    The hot path of every business transaction. Django's psycopg cursors bind parameters on
    the client, so PostgreSQL would parse and plan this INSERT in every transaction; a
    server-side prepared statement on the same connection (and so in the same transaction)
    skips that, unless ``OUTBOX["PREPARED_INSERT"]`` is off. No model signals are sent for
    outbox rows, and the prepared INSERT does not appear in Django's query log.
    """
    connection = connections[alias]
    if not is_postgresql(alias):  # the named query is PostgreSQL's dialect
        row.save(force_insert=True, using=alias)
        return
    parameters: dict[str, Any] = {
        "message_id": row.message_id,
        "event_type": row.event_type,
        "routing_key": row.routing_key,
        "exchange": row.exchange,
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
        "ordering_key": row.ordering_key,
        "payload": payload_json,
        "headers": headers_json,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "published_at": row.published_at,
        "lease_owner": row.lease_owner,
        "lease_expires_at": row.lease_expires_at,
    }
    if conf.get_bool("PREPARED_INSERT"):
        rows = fetch_prepared(alias, queries()["insert_message"], parameters).rows
        returned = rows[0] if rows else None
    else:
        with connection.cursor() as cursor:
            cursor.execute(queries()["insert_message"], parameters)
            returned = cursor.fetchone()
    assert returned is not None  # INSERT ... RETURNING always returns the row
    # Both timestamps are the statement's time by the database clock (the query).
    row.id, row.position, row.created_at = returned
    row.next_attempt_at = row.created_at
    row._state.adding = False
    row._state.db = alias


def _kick_relay_after_commit(alias: str) -> None:
    """With ``OUTBOX["KICK_ON_COMMIT"]``, have the Celery relay task sent once this
    transaction commits (``outbox.kick``), so the rows do not wait for the next beat run."""
    if kick.enabled():
        kick.after_commit(alias)


def _writable_alias(using: str | None) -> str:
    _refuse_async_context()
    alias = using or router.db_for_write(OutboxMessage)
    if conf.get_bool("REQUIRE_ATOMIC") and not transaction.get_connection(alias).in_atomic_block:
        raise TransactionRequiredError(
            "outbox.publish() must run inside transaction.atomic() so the event commits or"
            " rolls back with the business data (database "
            f'{alias!r}); set OUTBOX["REQUIRE_ATOMIC"] = False to allow autocommit writes'
        )
    return alias


def _refuse_async_context() -> None:
    """Raise ``TransactionRequiredError`` with the way out when an event loop runs here.

    Django's transactions are per thread and synchronous: in an async view no
    ``transaction.atomic`` of this thread can hold the row, and following the usual advice
    would only raise ``SynchronousOnlyOperation``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no event loop in this thread: the normal, synchronous case
        return
    raise TransactionRequiredError(
        "outbox.publish() cannot run in an async context (an event loop is running in this"
        " thread): Django transactions are synchronous. Put the unit of work (business writes"
        " and publish()) in a plain function under transaction.atomic() and await it through"
        " asgiref.sync.sync_to_async, e.g.\n"
        "    def place_order(data):\n"
        "        with transaction.atomic():\n"
        "            order = Order.objects.create(**data)\n"
        '            publish("orders.order_placed", {"order_id": order.pk})\n'
        "    await sync_to_async(place_order)(data)"
    )


def _short_string(name: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{name} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidMessageError(f"{name} must not be empty")
    if wire.utf8_length(name, value) > wire.SHORT_STRING_BYTES:
        raise InvalidMessageError(f"{name} is longer than {wire.SHORT_STRING_BYTES} bytes")
    # str.isprintable() is False for every whitespace character but the ASCII space, and for
    # control characters; one C-level scan instead of a Python loop over the characters.
    if not value.isprintable() or " " in value:
        raise InvalidMessageError(f"{name} must not contain spaces or control characters")
    return value


def _payload(payload: object) -> tuple[Any, str]:
    if not isinstance(payload, Mapping):
        raise InvalidMessageError(
            f"payload must be a JSON object (a mapping), got {type(payload).__name__}"
        )
    text = _encode("payload", payload)
    limit = conf.get_int("MAX_PAYLOAD_BYTES")
    size = len(text.encode())
    if size > limit:
        raise PayloadTooLargeError(
            f'payload is {size} bytes as JSON, over OUTBOX["MAX_PAYLOAD_BYTES"] = {limit}'
        )
    # Store what the relay will send: the JSON round trip turns Decimal, UUID and datetime
    # into the strings that reach the broker, so the returned row shows the real message.
    return json.loads(text), text


def _headers(headers: object) -> tuple[dict[str, Any], str]:
    """The checked headers plus the current trace context, as stored, and their JSON text."""
    if headers is None:
        headers = {}
    if not isinstance(headers, Mapping):
        raise InvalidMessageError(f"headers must be a mapping, got {type(headers).__name__}")
    for key, value in headers.items():
        wire.check_header_name("headers", key)
        if key in RESERVED_HEADERS:
            raise InvalidMessageError(
                f"header {key!r} is set by the outbox from the aggregate arguments"
            )
        if key.lower().startswith(wire.FRAMEWORK_HEADER_PREFIX):
            raise InvalidMessageError(
                f"header {key!r}: names starting with {wire.FRAMEWORK_HEADER_PREFIX!r} are"
                " reserved for the outbox's own headers (attempts, position, dead-letter reason)"
            )
        wire.check_header_value(f"headers[{key!r}]", value, also=_STRING_ENCODED_HEADER_TYPES)
    with_trace = tracing.with_trace_headers(dict(headers))
    if not with_trace:
        return {}, "{}"
    text = _encode("headers", with_trace)
    decoded: dict[str, Any] = json.loads(text)
    return decoded, text


def _encode(name: str, value: object) -> str:
    try:
        return encode(value)
    except (TypeError, ValueError) as error:
        raise InvalidMessageError(f"{name} cannot be serialized as JSON: {error}") from error
