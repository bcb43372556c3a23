"""Requeue and discard dead letters recorded by the consumers (``outbox.consumer.dead_letters``).

The admin actions and ``outbox_dead_letters`` both call these functions. A requeue publishes
the stored message (body, properties, headers) back to its consumer's queue with the same
``message_id`` and no attempt count, so the consumer runs it as a first delivery; it needs no
copy on the broker. The broker's dead-letter queue is left as it is: its copies are the
broker-side safety net (bound them with a RabbitMQ policy, see docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import pika
import pika.exceptions
from django.db import router, transaction
from django.db.models import QuerySet
from django.db.models.functions import Now
from pika.adapters.blocking_connection import BlockingChannel

from outbox import wire
from outbox.broker import connection_parameters
from outbox.consumer.fields import sendable_headers
from outbox.exceptions import RequeueRefusedError
from outbox.models import DeadLetter
from outbox.operations.actions import BatchCallback, _log

__all__ = ["ATTEMPT_HEADERS", "DEFAULT_BATCH_SIZE", "discard", "requeue", "requeue_properties"]

Status = DeadLetter.Status
DEFAULT_BATCH_SIZE = 100
#: Framework headers of one consumer's attempts; a requeued message starts without them.
ATTEMPT_HEADERS = frozenset(
    {
        wire.HEADER_ATTEMPTS,
        wire.HEADER_ERROR_TYPE,
        wire.HEADER_ERROR_MESSAGE,
        wire.HEADER_REASON,
        wire.HEADER_DEAD_LETTERED_AT,
        wire.HEADER_CONSUMER,
        wire.HEADER_REWRITTEN,
    }
)


def requeue(
    records: QuerySet[DeadLetter],
    *,
    actor: str,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Publish dead (or discarded) records back to their consumers' queues and mark them
    requeued by ``actor``; return how many.

    Each message waits for the broker's confirm before its record is marked, in the batch's
    transaction; a refusal (``RequeueRefusedError``: the queue does not exist) or a lost
    connection stops the run after committing the records already sent.
    """
    publisher = _Publisher()
    try:
        changed = _in_batches(
            records,
            {Status.DEAD, Status.DISCARDED},
            publisher.send,
            Status.REQUEUED,
            actor,
            on_batch,
            batch_size,
        )
    finally:
        publisher.close()
    _log("requeue_dead_letters", changed, actor=actor)
    return changed


def discard(
    records: QuerySet[DeadLetter],
    *,
    actor: str,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Mark dead records discarded by ``actor`` (nobody will process them); return how many.
    The record stays, for the audit and a later requeue."""
    changed = _in_batches(
        records, {Status.DEAD}, lambda record: None, Status.DISCARDED, actor, on_batch, batch_size
    )
    _log("discard_dead_letters", changed, actor=actor)
    return changed


def requeue_properties(record: DeadLetter) -> pika.BasicProperties:
    """The AMQP properties a requeue of ``record`` carries: those stored, the same
    ``message_id`` and type, persistent, headers without the attempt history."""
    headers: dict[str, Any] = {
        key: value for key, value in record.headers.items() if key not in ATTEMPT_HEADERS
    }
    if record.routing_key:
        # Published to the queue by name: the handler still sees the producer's routing key.
        headers[wire.HEADER_ROUTING_KEY] = record.routing_key
    kept = record.properties
    return pika.BasicProperties(
        content_type=kept.get("content_type"),
        content_encoding=kept.get("content_encoding"),
        headers=sendable_headers(headers),
        delivery_mode=wire.PERSISTENT,
        priority=kept.get("priority"),
        correlation_id=kept.get("correlation_id"),
        reply_to=kept.get("reply_to"),
        message_id=record.message_id or None,
        timestamp=kept.get("timestamp"),
        type=record.event_type or None,
        app_id=kept.get("app_id"),
    )


class _Publisher:
    """One confirmed channel, opened at the first message to requeue."""

    def __init__(self) -> None:
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def send(self, record: DeadLetter) -> None:
        if self._channel is None:
            self._connection = pika.BlockingConnection(
                connection_parameters(client_name="outbox dead-letter requeue")
            )
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        try:
            # mandatory: a queue that does not exist raises instead of dropping the message.
            self._channel.basic_publish(
                "", record.queue, bytes(record.body), requeue_properties(record), mandatory=True
            )
        except pika.exceptions.UnroutableError as error:
            raise RequeueRefusedError(
                f"queue {record.queue!r} of consumer {record.consumer!r} does not exist; declare"
                f" it with `outbox_consume {record.consumer} --declare-only`"
            ) from error
        except pika.exceptions.NackError as error:
            raise RequeueRefusedError(
                f"RabbitMQ refused the requeue of {record.message_id} to {record.queue!r}"
            ) from error

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()


def _in_batches(
    records: QuerySet[DeadLetter],
    statuses: Collection[str],
    act: Callable[[DeadLetter], None],
    new_status: str,
    actor: str,
    on_batch: BatchCallback | None,
    batch_size: int,
) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    alias = records.db or router.db_for_write(DeadLetter)
    selected = DeadLetter.objects.using(alias).filter(
        pk__in=records.order_by().values("pk"), status__in=statuses
    )
    last_id = 0
    changed = 0
    while True:
        failure: Exception | None = None
        with transaction.atomic(using=alias):
            batch = list(
                selected.filter(pk__gt=last_id)
                .order_by("pk")
                .select_for_update(skip_locked=True)[:batch_size]
            )
            if not batch:
                return changed
            done: list[int] = []
            for record in batch:
                try:
                    act(record)
                except Exception as error:
                    failure = error
                    break
                done.append(record.pk)
            if done:
                DeadLetter.objects.using(alias).filter(pk__in=done).update(
                    status=new_status, resolved_at=Now(), resolved_by=actor[:255]
                )
                if on_batch is not None:
                    on_batch(done)
        # Records sent before a failure are committed as requeued, then the failure is raised.
        changed += len(done)
        if failure is not None:
            raise failure
        last_id = batch[-1].pk
