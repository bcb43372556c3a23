"""Recording dead letters in the database: the consumer's one call when it dead-letters.

``record()`` runs right after the broker confirmed the copy in the dead-letter queue. It writes
a ``DeadLetter`` row on a thread of its own, so in a transaction of its own whatever the
calling thread is in the middle of (the message's own transaction has rolled back by then),
and it never raises: a record that cannot be written is logged, the consumer goes on, and the
broker's copy stays where it is. ``outbox.operations.dead_letters`` requeues and discards
records.
"""

from __future__ import annotations

import datetime
import decimal
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models.functions import Now

from outbox import wire
from outbox.models import DeadLetter

if TYPE_CHECKING:
    from outbox.consumer.processing import Delivery, Outcome

__all__ = ["RECORD_TIMEOUT_SECONDS", "dead_letter_fields", "record"]

logger = logging.getLogger("outbox.consumer")

#: How long the consumer waits for a record to be written before it goes on without it.
RECORD_TIMEOUT_SECONDS = 10.0
# Tracebacks keep their end, where the error is; errors and reasons their start.
_MAX_TRACEBACK_CHARS = 20_000
_MAX_TEXT_CHARS = 10_000
_SHORT = 255
# Headers RabbitMQ adds when it dead-letters by itself; not part of the message.
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
# AMQP properties kept for a requeue, besides message_id, type and headers (columns).
_KEPT_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "priority",
    "timestamp",
    "app_id",
)

# One thread, started on first use: its database connection is never inside the caller's
# transaction, and records are written one after the other.
_recorder: ThreadPoolExecutor | None = None


def record(consumer: str, queue: str, delivery: Delivery, outcome: Outcome) -> None:
    """Record that ``consumer`` dead-lettered ``delivery`` (taken from ``queue``) because of
    ``outcome``. Never raises; waits at most ``RECORD_TIMEOUT_SECONDS``."""
    global _recorder
    try:
        fields = dead_letter_fields(consumer, queue, delivery, outcome)
        if _recorder is None:
            _recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dead-letter-record")
        _recorder.submit(_write, fields).result(timeout=RECORD_TIMEOUT_SECONDS)
    except FutureTimeout:
        logger.error(
            "%s: dead letter %s not recorded within %.0fs (the database is slow or unreachable);"
            " it is in the dead-letter queue, and its record may still be written",
            consumer,
            delivery.properties.message_id,
            RECORD_TIMEOUT_SECONDS,
        )
    except Exception:
        logger.exception(
            "%s: could not record dead letter %s in the database; it is in the dead-letter"
            " queue %s.dead all the same",
            consumer,
            delivery.properties.message_id,
            queue,
        )


def dead_letter_fields(
    consumer: str, queue: str, delivery: Delivery, outcome: Outcome
) -> dict[str, Any]:
    """The ``DeadLetter`` column values for one dead-lettered delivery.

    Total over whatever a delivery holds: headers and properties become JSON PostgreSQL can
    store (bytes, decimals and dates as text, NUL characters replaced), and a body that is
    not such JSON is kept only as bytes (``payload`` None).
    """
    properties = delivery.properties
    raw_headers = {
        _text(key): value
        for key, value in (properties.headers or {}).items()
        if not (isinstance(key, str) and key.startswith(_BROKER_DEATH_HEADERS))
    }
    headers = {key: _json_safe(value) for key, value in raw_headers.items()}
    routing_key = headers.get(wire.HEADER_ROUTING_KEY)
    return {
        "consumer": consumer,
        "queue": queue,
        "message_id": _text(properties.message_id)[:_SHORT],
        "event_type": _text(properties.type)[:_SHORT],
        "routing_key": (
            routing_key if isinstance(routing_key, str) and routing_key else delivery.routing_key
        )[:_SHORT],
        "aggregate_type": _text(headers.get(wire.AGGREGATE_TYPE_HEADER))[:_SHORT],
        "aggregate_id": _text(headers.get(wire.AGGREGATE_ID_HEADER))[:_SHORT],
        "payload": _payload(delivery.body),
        "body": bytes(delivery.body),
        "headers": headers,
        "properties": {
            name: _json_safe(getattr(properties, name))
            for name in _KEPT_PROPERTIES
            if getattr(properties, name) is not None
        },
        "reason": _clean(outcome.reason)[:_MAX_TEXT_CHARS],
        "error_type": _clean(outcome.error_type)[:_SHORT],
        "error": _clean(outcome.error_message)[:_MAX_TEXT_CHARS],
        "traceback": _clean(outcome.traceback)[-_MAX_TRACEBACK_CHARS:],
        "attempts": outcome.attempt if outcome.kind == "failed" else 0,
    }


def _write(fields: dict[str, Any]) -> None:
    alias = router.db_for_write(DeadLetter)
    try:
        for _ in range(2):
            try:
                with transaction.atomic(using=alias):
                    # The same message dead-lettered again before anyone acted on it (its ack
                    # was lost, so it came back): refresh the open record.
                    updated = (
                        DeadLetter.objects.using(alias)
                        .filter(
                            consumer=fields["consumer"],
                            message_id=fields["message_id"],
                            status=DeadLetter.Status.DEAD,
                        )
                        .update(**fields, dead_lettered_at=Now())
                    )
                    if not updated:
                        DeadLetter.objects.using(alias).create(**fields)
                return
            except IntegrityError:
                continue  # another process recorded it meanwhile: update that one
    finally:
        # Dead letters are rare: no connection is kept open between them.
        connections.close_all()


def _payload(body: bytes) -> Any:
    try:
        payload = json.loads(body.decode("utf-8"))
        # PostgreSQL's jsonb refuses the NUL character; such a body stays bytes only.
        if "\\u0000" in json.dumps(payload):
            return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return payload


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` (as pika decoded it) as JSON PostgreSQL stores; lossy for bytes and dates."""
    if depth > 100:
        return "<nested too deeply>"
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, decimal.Decimal | datetime.datetime | datetime.date):
        return str(value)
    if isinstance(value, dict):
        return {_text(key): _json_safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item, depth + 1) for item in value]
    return _clean(str(value))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return _clean(value.decode("utf-8", errors="replace"))
    return _clean(str(value))


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; lone surrogates cannot be encoded as UTF-8.
    return text.replace("\x00", "\ufffd").encode("utf-8", errors="replace").decode("utf-8")
