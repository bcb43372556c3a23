"""One delivery's way through a consumer: decode it, then run its handlers in one transaction
with its inbox record. Runs no AMQP; the loop settles the ``Outcome`` on the channel."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from traceback import format_exception
from typing import Literal

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from pika.spec import BasicProperties

from outbox import tracing, wire
from outbox.consumer import inbox
from outbox.consumer.registry import ConsumerSpec, IncomingMessage
from outbox.models import InboxMessage

logger = logging.getLogger("outbox.consumer")

REASON_HANDLER_FAILED = "handler failed"
MAX_ERROR_CHARS = 2000
#: Headers RabbitMQ writes when it dead-letters; copies we republish start a fresh history.
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
#: The largest ``x-outbox-attempts`` a copy may carry: a 32-bit count, far above any
#: ``CONSUMER_MAX_ATTEMPTS``, so the next attempt's number still fits an AMQP integer.
_MAX_ATTEMPTS = 2**31 - 1
#: ``content_encoding`` values that mean the body is not transformed (some clients write
#: the charset there).
_PLAIN_ENCODINGS = ("identity", "utf-8", "utf8")


@dataclass(frozen=True)
class Delivery:
    """One message as RabbitMQ delivered it, before decoding."""

    tag: int
    routing_key: str
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery; decides how the main thread settles it."""

    kind: Literal["processed", "duplicate", "failed", "malformed", "outage"]
    attempt: int = 1
    reason: str = ""
    error_type: str = ""
    error_message: str = ""
    # The failure's Python traceback: kept in the dead-letter record, never sent in headers.
    traceback: str = ""


def decode(spec: ConsumerSpec, delivery: Delivery) -> IncomingMessage | str:
    """The message in ``delivery``, or the reason it is malformed.

    Total: whatever the properties, headers and body hold, this returns (a reason string for
    anything the consumer cannot take), so that a poison message is dead-lettered instead of
    stopping the consumer.
    """
    properties = delivery.properties
    headers = dict(properties.headers or {})
    message_id: object = properties.message_id
    if not message_id:
        return "no message_id property"
    if not isinstance(message_id, str) or _text_problem(message_id):
        return f"message_id property {_text_problem(message_id)}"
    event_type: object = properties.type
    if not event_type:
        return "no type property (the event type)"
    if not isinstance(event_type, str) or _text_problem(event_type):
        return f"type property {_text_problem(event_type)}"
    if problem := _content_problem(properties):
        return problem
    try:
        payload = json.loads(delivery.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return f"body is not UTF-8 JSON: {error}"
    except RecursionError:
        return "body is not UTF-8 JSON: nested too deeply to decode"
    if not isinstance(payload, dict):
        return f"body is a JSON {type(payload).__name__}, not an object"
    if not spec.handlers_for(event_type):
        return f"consumer {spec.name!r} has no handler for event type {event_type!r}"
    attempts = headers.get(wire.HEADER_ATTEMPTS, 0)
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 0 <= attempts <= _MAX_ATTEMPTS
    ):
        return f"{wire.HEADER_ATTEMPTS} header is not a count of attempts: {_shown(attempts)}"[
            :MAX_ERROR_CHARS
        ]
    timestamp = properties.timestamp
    try:
        sent_at = datetime.fromtimestamp(timestamp, UTC) if timestamp else None
    except (OverflowError, OSError, ValueError, TypeError):
        return f"timestamp property {_shown(timestamp)} is not a time Python can represent"
    routing_key = headers.get(wire.HEADER_ROUTING_KEY)
    return IncomingMessage(
        consumer=spec.name,
        message_id=message_id,
        event_type=event_type,
        payload=payload,
        headers={
            key: value
            for key, value in headers.items()
            if not (
                isinstance(key, str)
                and key.startswith((wire.FRAMEWORK_HEADER_PREFIX, *BROKER_DEATH_HEADERS))
            )
        },
        routing_key=routing_key
        if isinstance(routing_key, str) and routing_key
        else delivery.routing_key,
        aggregate_type=_header_text(headers.get(wire.AGGREGATE_TYPE_HEADER)),
        aggregate_id=_header_text(headers.get(wire.AGGREGATE_ID_HEADER)),
        timestamp=sent_at,
        attempt=attempts + 1,
    )


def _text_problem(value: object) -> str:
    """What stops ``value`` (a short-string property) from being an inbox key, or ""."""
    if not isinstance(value, str):
        # pika hands over the raw bytes of a short string that is not valid UTF-8.
        return f"is not UTF-8 text: {value!r}"[:MAX_ERROR_CHARS]
    if "\x00" in value:
        return f"contains the NUL character, which PostgreSQL text cannot hold: {value!r}"
    return ""


def _content_problem(properties: BasicProperties) -> str:
    """Why the body cannot be read as UTF-8 JSON according to its properties, or ""."""
    content_type = properties.content_type
    if content_type:
        media_type = (
            content_type.split(";")[0].strip().lower() if isinstance(content_type, str) else ""
        )
        if media_type != wire.CONTENT_TYPE:
            return f"content_type {content_type!r} is not {wire.CONTENT_TYPE}"
    encoding = properties.content_encoding
    if encoding and (not isinstance(encoding, str) or encoding.lower() not in _PLAIN_ENCODINGS):
        return f"content_encoding {encoding!r} is not supported (the body must be plain UTF-8)"
    return ""


def _shown(value: object) -> str:
    """``repr(value)``, without the ``L`` of pika's 64-bit ``long`` (an ``int`` subclass)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return repr(int(value))
    return repr(value)


def _header_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def process(spec: ConsumerSpec, message: IncomingMessage) -> Outcome:
    """Run ``message``'s handlers once, in one transaction with its inbox record.

    Never raises: a handler's exception rolls the transaction back and becomes a "failed"
    outcome carrying the error, or an "outage" one if the database became unreachable (see
    ``is_database_outage``), which costs the message no attempt.
    """
    alias = router.db_for_write(InboxMessage)
    try:
        # The span (a no-op without OpenTelemetry) continues the producer's trace, so spans and
        # outbox messages of the handler join it too.
        with (
            tracing.continue_trace(message.headers, name=f"{spec.name} {message.event_type}"),
            transaction.atomic(using=alias),
        ):
            if not inbox.claim(spec.name, message.message_id, event_type=message.event_type):
                return Outcome("duplicate", message.attempt)
            for func in spec.handlers_for(message.event_type):
                func(message)
    except Exception as error:
        error_type = f"{type(error).__module__}.{type(error).__qualname__}"
        if is_database_outage(error, alias):
            # Django reconnects on the next query once the broken connection is closed.
            with contextlib.suppress(DatabaseError):
                connections[alias].close()
            return Outcome(
                "outage",
                message.attempt,
                error_type=error_type,
                error_message=str(error)[:MAX_ERROR_CHARS],
            )
        logger.warning(
            "%s: handler failed on %s %s (attempt %d)",
            spec.name,
            message.event_type,
            message.message_id,
            message.attempt,
            exc_info=True,
        )
        drop_broken_database_connections()
        return Outcome(
            "failed",
            message.attempt,
            reason=REASON_HANDLER_FAILED,
            error_type=error_type,
            error_message=str(error)[:MAX_ERROR_CHARS],
            traceback="".join(format_exception(error)),
        )
    return Outcome("processed", message.attempt)


def is_database_outage(error: BaseException, alias: str) -> bool:
    """Whether ``error`` means the database ``alias`` (the inbox's) is unreachable, rather
    than that this message's processing failed.

    Both must hold: an ``OperationalError`` or ``InterfaceError`` (Django's, or the driver's)
    is ``error`` itself or in its cause / context chain, so a handler that wraps the error
    still counts; and the inbox connection is gone afterwards: never opened (the connect
    failed), closed by Django because its rollback failed, or failing ``SELECT 1``. An
    ``OperationalError`` on a connection that still works (a lock or statement timeout, a
    deadlock, a serialization failure) is the message's failure and is retried with its
    attempts, like an ``IntegrityError`` or any other exception.
    """
    connection = connections[alias]
    driver = getattr(connection, "Database", None)
    kinds: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
    if driver is not None:
        kinds += (driver.OperationalError, driver.InterfaceError)
    if not any(isinstance(link, kinds) for link in _error_chain(error)):
        return False
    if connection.connection is None:
        return True
    try:
        return not connection.is_usable()
    except Exception:  # a driver that raises instead of answering False
        return True


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def drop_broken_database_connections() -> None:
    """Close database connections that are no longer usable (e.g. PostgreSQL restarted), so
    the next message opens a fresh one instead of failing the same way."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.is_usable():
            connection.close()
