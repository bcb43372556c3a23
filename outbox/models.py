"""The outbox table: integration events waiting for (or done with) the relay."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from outbox.common.jsontext import OutboxJSONEncoder


class OutboxMessage(models.Model):
    """One integration event, written in the business transaction and published by the relay.

    ``message_id`` is the public identity sent to RabbitMQ and stays the same across
    re-publishes. ``position`` is assigned by a database trigger at insert time, after the
    row's ordering key is locked for the rest of the transaction: rows of one key therefore
    get positions in the order their transactions commit (``id`` does not have that
    property). See docs/relay.md.
    """

    class Status(models.TextChoices):
        READY = "ready", "ready"
        PUBLISHED = "published", "published"
        FAILED = "failed", "failed"

    id = models.BigAutoField(primary_key=True)
    message_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(max_length=255)
    routing_key = models.CharField(max_length=255)
    exchange = models.CharField(max_length=255, blank=True)
    aggregate_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_id = models.CharField(max_length=255, blank=True, default="")
    # "<aggregate_type>:<aggregate_id>", or "" for a message with no aggregate (no order
    # promised). Stored, not computed, because the relay's claim query groups by it.
    ordering_key = models.CharField(max_length=511, blank=True, default="")
    payload = models.JSONField(encoder=OutboxJSONEncoder)
    headers = models.JSONField(default=dict, blank=True, encoder=OutboxJSONEncoder)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    attempts = models.PositiveIntegerField(default=0)
    # Both written by the database's clock (STATEMENT_TIMESTAMP() on PostgreSQL), which is the
    # clock the relay's claim compares them with: an application server whose clock runs
    # ahead would otherwise write rows "due in the future" that no relay claims until then.
    next_attempt_at = models.DateTimeField(db_default=Now())
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    published_at = models.DateTimeField(null=True, blank=True)
    # Set by the BEFORE INSERT trigger of migration 0001_initial; the db_default only makes
    # Django leave the column to the database and read the real value back on insert.
    position = models.BigIntegerField(db_default=0, editable=False)
    # A relay's claim: who holds the row and until when. An expired lease is free again.
    lease_owner = models.CharField(max_length=255, blank=True, default="", editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "outbox_message"
        verbose_name = "outbox message"
        indexes = [
            # No index on ready rows by position: nothing reads them that way (the claim walks
            # the two below), and one cost every publish() an index entry and made the
            # relay's mark AND a bitmap of the whole backlog into each UPDATE.
            # The claim of keyed rows: a loose index scan over the distinct keys with
            # unpublished rows, then each key's head and run in position order.
            models.Index(
                fields=["ordering_key", "position"],
                name="outbox_unpublished_key_idx",
                condition=~models.Q(status="published"),
            ),
            # The claim of rows without an ordering key, oldest first, apart from the keyed
            # ones: a backlog of keyed rows is never stepped over to find them.
            models.Index(
                fields=["position"],
                name="outbox_ready_unkeyed_idx",
                condition=models.Q(status="ready", ordering_key=""),
            ),
            # Operations: purge ranges over old published rows and "published in the last
            # minute" reads the newest, without scanning the table.
            models.Index(
                fields=["published_at"],
                name="outbox_published_at_idx",
                condition=models.Q(status="published"),
            ),
        ]
        # One permission per admin action, so each can be granted on its own.
        permissions = [
            ("retry_outboxmessage", "Can retry outbox messages now"),
            ("mark_failed_outboxmessage", "Can mark outbox messages failed"),
            ("replay_outboxmessage", "Can replay outbox messages"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.message_id} ({self.status})"


class InboxMessage(models.Model):
    """A message one consumer has processed: written in the same transaction as the handler's
    effects, so "processed" and "recorded" commit or roll back together.

    The unique (consumer, message_id) key is the idempotency check; a second delivery of the
    same message to the same consumer finds its row and skips the handler.
    """

    id = models.BigAutoField(primary_key=True)
    consumer = models.CharField(max_length=255)
    # Text, not UUID: the outbox sends UUIDs, but other producers and Celery tasks may not.
    message_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=255, blank=True, default="")
    processed_at = models.DateTimeField(default=timezone.now)
    # The JSON text of an @idempotent function's return value, handed to duplicate calls;
    # text, not jsonb, so the value reads back exactly as written. "": no result (None).
    result = models.TextField(blank=True, db_default="", editable=False)

    class Meta:
        db_table = "outbox_inbox"
        verbose_name = "inbox message"
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "message_id"], name="outbox_inbox_consumer_message_uniq"
            )
        ]
        indexes = [
            # The purge deletes the oldest rows first, in batches.
            models.Index(fields=["processed_at"], name="outbox_inbox_processed_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} processed {self.message_id}"


# --- local jobs (durable after-commit work; issue 14) ---------------------------------------


class OutboxJob(models.Model):
    """Work that must run after its transaction commits, in this service: a local job.

    Written in the business transaction like an outbox row, but never sent to RabbitMQ: a job
    runner (``outbox_jobs``, or the ``outbox.tasks.run_jobs`` Celery task) claims it after the
    commit and runs the executor registered for its ``kind`` (for durable domain-event
    handlers, ``domain_events``). A job that succeeds is deleted in the transaction that ran
    it; the at-most-once record it leaves is an inbox row (consumer ``"<kind>:<name>"``,
    message id ``key``). One that never succeeds ends ``failed``, with its error.
    """

    class Status(models.TextChoices):
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    id = models.BigAutoField(primary_key=True)
    # Which executor runs it, e.g. "domain_events.handler".
    kind = models.CharField(max_length=64)
    # What the executor runs, e.g. a handler's dotted name.
    name = models.CharField(max_length=190)
    # What it runs on, e.g. an event id: one job (and one run) per (kind, name, key).
    key = models.CharField(max_length=255)
    payload = models.JSONField(encoder=OutboxJSONEncoder)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    attempts = models.PositiveIntegerField(default=0)
    # Database clock, as for outbox rows: the runner's claim compares with now().
    next_attempt_at = models.DateTimeField(db_default=Now())
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    lease_owner = models.CharField(max_length=255, blank=True, default="", editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "outbox_job"
        verbose_name = "outbox job"
        constraints = [
            models.UniqueConstraint(fields=["kind", "name", "key"], name="outbox_job_unique"),
        ]
        indexes = [
            # The claim: ready jobs by due time. Done jobs are deleted, so the table stays
            # as small as the work waiting plus the failed jobs.
            models.Index(
                fields=["next_attempt_at"],
                name="outbox_job_due_idx",
                condition=models.Q(status="ready"),
            ),
        ]
        permissions = [("retry_outboxjob", "Can retry outbox jobs now")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} for {self.key} ({self.status})"


# --- Dead letters (issue 15) -------------------------------------------------------------


class DeadLetter(models.Model):
    """A message a consumer dead-lettered, recorded in its own transaction when it was sent to
    the consumer's dead-letter queue, so operators can see and requeue it without RabbitMQ.

    The record keeps what a requeue needs to publish the message again after the broker's copy
    is gone: the queue it came from, the body as received and its AMQP properties. ``status``
    says what an operator did with it; at most one record per consumer and message is
    ``dead`` at a time.
    """

    class Status(models.TextChoices):
        DEAD = "dead", "dead"
        REQUEUED = "requeued", "requeued"
        DISCARDED = "discarded", "discarded"

    id = models.BigAutoField(primary_key=True)
    consumer = models.CharField(max_length=255)
    # The consumer's queue, where a requeue sends the message back (through the default
    # exchange); its dead-letter queue is this name plus ".dead".
    queue = models.CharField(max_length=255)
    message_id = models.CharField(max_length=255, blank=True, default="")
    event_type = models.CharField(max_length=255, blank=True, default="")
    # The producer's routing key, which the consumer hands to handlers after a requeue too.
    routing_key = models.CharField(max_length=255, blank=True, default="")
    aggregate_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_id = models.CharField(max_length=255, blank=True, default="")
    # The body decoded as JSON, or None when it is not JSON PostgreSQL can store; ``body``
    # holds the bytes as received either way, and a requeue sends those.
    payload = models.JSONField(null=True, blank=True, encoder=OutboxJSONEncoder)
    body = models.BinaryField(default=b"")
    headers = models.JSONField(default=dict, blank=True, encoder=OutboxJSONEncoder)
    # content_type, correlation_id, timestamp...: the AMQP properties other than the above.
    properties = models.JSONField(default=dict, blank=True, encoder=OutboxJSONEncoder)
    reason = models.TextField(blank=True, default="")
    error_type = models.CharField(max_length=255, blank=True, default="")
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    dead_lettered_at = models.DateTimeField(db_default=Now())
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DEAD)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        db_table = "outbox_dead_letter"
        verbose_name = "dead letter"
        constraints = [
            # A message dead-lettered again before anyone acted on it (its acknowledgement
            # was lost) updates the open record instead of adding a second one.
            models.UniqueConstraint(
                fields=["consumer", "message_id"],
                name="outbox_dead_letter_open_uniq",
                condition=models.Q(status="dead"),
            )
        ]
        indexes = [
            models.Index(fields=["message_id"], name="outbox_dead_message_idx"),
            models.Index(fields=["aggregate_id"], name="outbox_dead_aggregate_idx"),
        ]
        permissions = [
            ("requeue_deadletter", "Can requeue dead letters"),
            ("discard_deadletter", "Can discard dead letters"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} dead letter {self.message_id or '(no message id)'}"
