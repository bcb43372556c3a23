"""``publish()``: write integration events to the outbox in the caller's transaction.

Everything is checked before anything is written, so a bad message raises at the call and
leaves nothing behind, in ``publish_many`` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any
from uuid import UUID

import psycopg
from django.db import connections, router, transaction

from outbox import conf, tracing
from outbox.common.database import is_postgresql
from outbox.common.jsontext import encode
from outbox.exceptions import InvalidMessageError, PayloadTooLargeError, TransactionRequiredError
from outbox.models import OutboxMessage
from outbox.relay.postgresql import queries

# AMQP "short strings" (routing key, exchange, type) hold at most 255 bytes.
_SHORT_STRING_BYTES = 255
# No ':' in an aggregate type keeps "<type>:<id>" ordering keys unambiguous.
_AGGREGATE_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_EXCHANGE_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]*$")
RESERVED_HEADERS = frozenset({"aggregate_type", "aggregate_id"})

AggregateId = str | int | UUID


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
    ``PayloadTooLargeError``) for bad input; in both cases nothing is written.
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
    return row


def publish_many(messages: Iterable[Message], *, using: str | None = None) -> list[OutboxMessage]:
    """Write many integration events in one INSERT statement and return the rows, in order.

    All messages are checked first: if any is invalid, ``InvalidMessageError`` names its
    position and nothing is written. Rows are inserted grouped by ordering key (the messages
    of one key keep their order), so their per-key locks are always taken in the same order.
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
        # The insert trigger locks each ordering key until commit. Taking the locks in one
        # global order (sorted by key; stable, so a key's own rows keep their order) means two
        # batches with overlapping keys wait for each other instead of deadlocking.
        OutboxMessage.objects.using(alias).bulk_create(sorted(rows, key=attrgetter("ordering_key")))
    return rows


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
    exchange = conf.get("EXCHANGE") if message.exchange is None else message.exchange
    if not isinstance(exchange, str) or not _EXCHANGE_PATTERN.match(exchange):
        raise InvalidMessageError(
            f"exchange must be a string of letters, digits, '-', '_', '.', ':'; got {exchange!r}"
        )
    _short_string("exchange", exchange, allow_empty=True)
    aggregate_type, aggregate_id = _aggregate(message.aggregate_type, message.aggregate_id)
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
        "next_attempt_at": row.next_attempt_at,
        "last_error": row.last_error,
        "created_at": row.created_at,
        "published_at": row.published_at,
        "lease_owner": row.lease_owner,
        "lease_expires_at": row.lease_expires_at,
    }
    if conf.get("PREPARED_INSERT"):
        connection.ensure_connection()
        # wrap_database_errors: the same django.db exceptions, and connection bookkeeping, as
        # a query through Django's own cursor.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(queries()["insert_message"], parameters, prepare=True)
            returned = cursor.fetchone()
    else:
        with connection.cursor() as cursor:
            cursor.execute(queries()["insert_message"], parameters)
            returned = cursor.fetchone()
    assert returned is not None  # INSERT ... RETURNING always returns the row
    row.id, row.position = returned
    row._state.adding = False
    row._state.db = alias


def _writable_alias(using: str | None) -> str:
    alias = using or router.db_for_write(OutboxMessage)
    if conf.get("REQUIRE_ATOMIC") and not transaction.get_connection(alias).in_atomic_block:
        raise TransactionRequiredError(
            "outbox.publish() must run inside transaction.atomic() so the event commits or"
            " rolls back with the business data (database "
            f'{alias!r}); set OUTBOX["REQUIRE_ATOMIC"] = False to allow autocommit writes'
        )
    return alias


def _short_string(name: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{name} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidMessageError(f"{name} must not be empty")
    if len(value.encode()) > _SHORT_STRING_BYTES:
        raise InvalidMessageError(f"{name} is longer than {_SHORT_STRING_BYTES} bytes")
    # str.isprintable() is False for every whitespace character but the ASCII space, and for
    # control characters; one C-level scan instead of a Python loop over the characters.
    if not value.isprintable() or " " in value:
        raise InvalidMessageError(f"{name} must not contain spaces or control characters")
    return value


def _aggregate(aggregate_type: object, aggregate_id: object) -> tuple[str, str]:
    if aggregate_type is None and aggregate_id is None:
        return "", ""
    if aggregate_type is None or aggregate_id is None:
        raise InvalidMessageError("aggregate_type and aggregate_id go together: give both or none")
    if not isinstance(aggregate_type, str) or not _AGGREGATE_TYPE_PATTERN.match(aggregate_type):
        raise InvalidMessageError(
            "aggregate_type must be a non-empty string of letters, digits, '_', '.', '-', '/';"
            f" got {aggregate_type!r}"
        )
    if isinstance(aggregate_id, bool) or not isinstance(aggregate_id, str | int | UUID):
        raise InvalidMessageError(
            f"aggregate_id must be a str, int or UUID, got {type(aggregate_id).__name__}"
        )
    text_id = str(aggregate_id)
    if not text_id or len(text_id) > 255:
        raise InvalidMessageError("aggregate_id must be 1 to 255 characters")
    if len(aggregate_type) > 255:
        raise InvalidMessageError("aggregate_type must be at most 255 characters")
    return aggregate_type, text_id


def _payload(payload: object) -> tuple[Any, str]:
    if not isinstance(payload, Mapping):
        raise InvalidMessageError(
            f"payload must be a JSON object (a mapping), got {type(payload).__name__}"
        )
    text = _encode("payload", payload)
    limit = conf.get("MAX_PAYLOAD_BYTES")
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
    for key in headers:
        if not isinstance(key, str) or not key or len(key.encode()) > _SHORT_STRING_BYTES:
            raise InvalidMessageError(f"header names must be non-empty strings, got {key!r}")
        if key in RESERVED_HEADERS:
            raise InvalidMessageError(
                f"header {key!r} is set by the outbox from the aggregate arguments"
            )
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
