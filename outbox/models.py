"""The outbox table: integration events waiting for (or done with) the relay."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from outbox.serialization import OutboxJSONEncoder


class OutboxMessage(models.Model):
    """One integration event, written in the business transaction and published by the relay.

    ``id`` grows with insertion and is the relay's tie-breaker; ``message_id`` is the public
    identity sent to RabbitMQ and stays the same across re-publishes.
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
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "outbox_message"
        verbose_name = "outbox message"
        indexes = [
            # The relay's claim: ready rows that are due, oldest first. Partial, so the index
            # stays as small as the backlog however many published rows the table keeps.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="outbox_ready_due_idx",
                condition=models.Q(status="ready"),
            ),
            # Per-aggregate order: "is there an older unpublished row with this key?"
            models.Index(
                fields=["ordering_key", "id"],
                name="outbox_unpublished_key_idx",
                condition=~models.Q(status="published"),
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
