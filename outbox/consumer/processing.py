"""A delivery's way through a consumer: decode it, then run its handlers with its inbox record,
a batch of messages in one transaction (``process_batch``) or one message alone (``process``).
Runs no AMQP; the loop settles each ``Outcome`` on the channel."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from traceback import format_exception
from typing import Literal

import psycopg
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
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
_IN_ERROR = psycopg.pq.TransactionStatus.INERROR


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
    #: Time the handlers ran (processed and failed messages), for the handler-time metric.
    handler_seconds: float = 0.0


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
    position = headers.get(wire.HEADER_POSITION)
    if position is not None and (
        isinstance(position, bool) or not isinstance(position, int) or position < 0
    ):
        return f"{wire.HEADER_POSITION} header is not a position: {_shown(position)}"[
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
        position=None if position is None else int(position),
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


#: How a batch's inbox records are written: ``inbox.claim_batch`` (consumer, (message id,
#: event type) pairs, database alias) -> the ids recorded now.
BatchClaim = Callable[[str, Sequence[tuple[str, str]], str], set[str]]


def _claim_batch(consumer: str, messages: Sequence[tuple[str, str]], alias: str) -> set[str]:
    return inbox.claim_batch(consumer, messages, using=alias)


def process_batch(
    spec: ConsumerSpec, messages: Sequence[IncomingMessage], *, claim: BatchClaim = _claim_batch
) -> list[Outcome]:
    """Run the handlers of ``messages`` (distinct message ids) in one transaction and return
    their outcomes in order.

    The inbox records of the whole batch are written first, in one statement; a message
    already recorded is a duplicate and runs nothing. The handlers then run one message after
    the other. If one raises, the transaction is rolled back and run again with a savepoint
    per message, without the message that failed (its outcome is "failed"): a handler that
    raises in that run rolls back only its savepoint and its inbox record. So the commit holds
    the effects and records of exactly the messages whose handlers succeeded.

    Never raises: a database outage makes every outcome "outage" (nothing was committed), and
    any other failure of the transaction as a whole (a savepoint that cannot be rolled back, a
    commit refused) processes the messages again one at a time with ``process``, so that only
    the message at fault fails. ``claim`` is for measuring the inbox's cost
    (``bench/consumer.py``).
    """
    if len({message.message_id for message in messages}) != len(messages):
        raise ValueError("a batch holds each message id once")
    alias = router.db_for_write(InboxMessage)
    failed: dict[str, Outcome] = {}
    try:
        try:
            return _batch_transaction(spec, messages, alias, claim, failed=None)
        except _HandlerFailedError as failure:
            # Rolled back; judged only now, since an aborted transaction fails every query.
            if is_database_outage(failure.error, alias):
                raise failure.error from None
            failed[failure.message.message_id] = _failed(
                spec, failure.message, failure.error, failure.elapsed
            )
        return _batch_transaction(spec, messages, alias, claim, failed=failed)
    except Exception as error:
        if is_database_outage(error, alias):
            outage = _outage(error, alias)
            return [dataclasses.replace(outage, attempt=m.attempt) for m in messages]
        logger.warning(
            "%s: a batch of %d messages failed as a whole; processing them one at a time",
            spec.name,
            len(messages),
            exc_info=True,
        )
        drop_broken_database_connections()
        return [failed.get(message.message_id) or process(spec, message) for message in messages]


class _HandlerFailedError(Exception):
    """A handler raised in a batch run without savepoints; the batch's transaction ends."""

    def __init__(self, message: IncomingMessage, error: Exception, elapsed: float) -> None:
        super().__init__(message.message_id)
        self.message = message
        self.error = error
        self.elapsed = elapsed


def _batch_transaction(
    spec: ConsumerSpec,
    messages: Sequence[IncomingMessage],
    alias: str,
    claim: BatchClaim,
    *,
    failed: dict[str, Outcome] | None,
) -> list[Outcome]:
    """One transaction over ``messages``. ``failed`` None: no savepoints, and the first handler
    that raises ends it with ``_HandlerFailedError``. Otherwise one savepoint per message, and
    the messages in ``failed`` keep that outcome without running again."""
    skipped = failed or {}
    # Looked up once: ``connections[alias]`` goes through a thread-local each time.
    database = connections[alias]
    with transaction.atomic(using=alias):
        to_run = [m for m in messages if m.message_id not in skipped]
        fresh = claim(spec.name, [(m.message_id, m.event_type) for m in to_run], alias)
        outcomes: list[Outcome] = []
        for message in messages:
            if message.message_id in skipped:
                outcomes.append(skipped[message.message_id])
            elif message.message_id not in fresh:
                outcomes.append(Outcome("duplicate", message.attempt))
            elif failed is None:
                outcomes.append(_run_unguarded(spec, message, database))
            else:
                outcomes.append(_run_in_savepoint(spec, message, alias, database))
    return outcomes


def _run_unguarded(
    spec: ConsumerSpec, message: IncomingMessage, database: BaseDatabaseWrapper
) -> Outcome:
    """Run ``message``'s handlers with no savepoint of their own: the fast path, which costs
    no round trip beyond the handlers' own queries."""
    started = time.perf_counter()
    try:
        with _handler_span(spec, message):
            _run_handlers(spec, message)
        _check_not_aborted(database)
    except Exception as error:
        raise _HandlerFailedError(message, error, time.perf_counter() - started) from error
    return Outcome("processed", message.attempt, handler_seconds=time.perf_counter() - started)


def _run_in_savepoint(
    spec: ConsumerSpec, message: IncomingMessage, alias: str, database: BaseDatabaseWrapper
) -> Outcome:
    """Run ``message``'s handlers in a savepoint of the batch's transaction; a failure rolls
    back the savepoint and the message's inbox record. A savepoint that cannot be set or
    rolled back (the transaction or the connection is broken) propagates: it ends the batch.

    The savepoint of a message that succeeded is not released: the commit ends it with the
    others, and a ``RELEASE`` would cost a round trip per message while freeing nothing (the
    server keeps the subtransaction's id until the commit either way). Django's savepoint
    functions are used so that ``on_commit`` callbacks of a rolled-back message are dropped.
    """
    started = time.perf_counter()
    savepoint = transaction.savepoint(using=alias)
    try:
        with _handler_span(spec, message):
            _run_handlers(spec, message)
        _check_not_aborted(database)
    except Exception as error:
        elapsed = time.perf_counter() - started
        transaction.savepoint_rollback(savepoint, using=alias)
        # Rolled back to before the error: the transaction is usable again, whatever an
        # atomic block inside the handler marked, and the connection answered, so this is
        # the message's failure, not an outage.
        transaction.set_rollback(False, using=alias)
        inbox.unclaim(spec.name, message.message_id, using=alias)
        return _failed(spec, message, error, elapsed)
    return Outcome("processed", message.attempt, handler_seconds=time.perf_counter() - started)


def process(spec: ConsumerSpec, message: IncomingMessage) -> Outcome:
    """Run ``message``'s handlers once, in one transaction with its inbox record.

    Never raises: a handler's exception rolls the transaction back and becomes a "failed"
    outcome carrying the error, or an "outage" one if the database became unreachable (see
    ``is_database_outage``), which costs the message no attempt.
    """
    alias = router.db_for_write(InboxMessage)
    started = time.perf_counter()
    try:
        with _handler_span(spec, message), transaction.atomic(using=alias):
            if not inbox.claim(spec.name, message.message_id, event_type=message.event_type):
                return Outcome("duplicate", message.attempt)
            started = time.perf_counter()
            _run_handlers(spec, message)
            _check_not_aborted(connections[alias])
    except Exception as error:
        elapsed = time.perf_counter() - started
        if is_database_outage(error, alias):
            return dataclasses.replace(_outage(error, alias), attempt=message.attempt)
        drop_broken_database_connections()
        return _failed(spec, message, error, elapsed)
    return Outcome("processed", message.attempt, handler_seconds=time.perf_counter() - started)


class TransactionAbortedError(Exception):
    """A handler caught a database error and returned: PostgreSQL has aborted the transaction,
    which can now only roll back. Its COMMIT would roll back without an error, and the
    message (and with it every message of its batch) would be acknowledged unprocessed."""


def _check_not_aborted(database: BaseDatabaseWrapper) -> None:
    """Raise ``TransactionAbortedError`` if the connection's transaction is aborted (known on
    the client, no round trip)."""
    pgconn = getattr(database.connection, "pgconn", None)
    if pgconn is not None and pgconn.transaction_status == _IN_ERROR:
        raise TransactionAbortedError(
            "a handler caught a database error and went on, leaving the transaction aborted;"
            " put the statement that may fail in its own transaction.atomic() block"
        )


def _handler_span(
    spec: ConsumerSpec, message: IncomingMessage
) -> contextlib.AbstractContextManager[object]:
    # The span continues the producer's trace, so spans and outbox messages of the handler
    # join it too. Without a trace to continue or a provider to record spans, it would be a
    # no-op that still costs some 20 µs of CPU per message.
    if not tracing.is_tracing(message.headers):
        return contextlib.nullcontext()
    return tracing.continue_trace(message.headers, name=f"{spec.name} {message.event_type}")


def _run_handlers(spec: ConsumerSpec, message: IncomingMessage) -> None:
    for func in spec.handlers_for(message.event_type):
        func(message)


def _failed(
    spec: ConsumerSpec, message: IncomingMessage, error: Exception, elapsed: float
) -> Outcome:
    logger.warning(
        "%s: handler failed on %s %s (attempt %d)",
        spec.name,
        message.event_type,
        message.message_id,
        message.attempt,
        exc_info=error,
    )
    return Outcome(
        "failed",
        message.attempt,
        reason=REASON_HANDLER_FAILED,
        error_type=_error_type(error),
        error_message=str(error)[:MAX_ERROR_CHARS],
        traceback="".join(format_exception(error)),
        handler_seconds=elapsed,
    )


def _outage(error: Exception, alias: str) -> Outcome:
    # Django reconnects on the next query once the broken connection is closed.
    with contextlib.suppress(DatabaseError):
        connections[alias].close()
    return Outcome(
        "outage", error_type=_error_type(error), error_message=str(error)[:MAX_ERROR_CHARS]
    )


def _error_type(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


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
