"""Tables of the event store: stored events, one version row per aggregate, snapshots, and the
checkpoints of projections.

Event-sourced aggregates themselves are plain Python (``domain_events.eventsourcing``); these
models are only their storage.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.functions import Now


class TransactionIdField(models.BigIntegerField):  # type: ignore[type-arg]
    """A PostgreSQL ``xid8`` column filled by the database with the writing transaction's id.

    Followers of the store use it to read only what every older transaction has finished
    writing (see ``domain_events.eventsourcing.projections``). Read back as an ``int``.
    """

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return "xid8"

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        # psycopg has no loader for xid8 and returns its text form.
        return None if value is None else int(value)


class StoredEvent(models.Model):
    """One event of one aggregate's stream.

    ``position`` is unique and grows with each insert, but positions are handed out before
    commit, so a reader must not assume that a committed position means every lower one is
    committed too: ``transaction_id`` is what readers use to wait for late writers.
    """

    position = models.BigAutoField(primary_key=True)
    transaction_id = TransactionIdField(
        db_default=models.Func(
            function="pg_current_xact_id", output_field=models.BigIntegerField()
        ),
        editable=False,
    )
    event_id = models.UUIDField(unique=True)
    aggregate_type = models.CharField(max_length=255)
    aggregate_id = models.CharField(max_length=255)
    version = models.PositiveBigIntegerField()
    event_type = models.CharField(max_length=255)
    schema_version = models.PositiveSmallIntegerField()
    data = models.JSONField()
    metadata = models.JSONField(default=dict)
    # "" when the save named no triggering message.
    triggering_message_id = models.CharField(max_length=255, blank=True, default="")
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            # The backstop of optimistic concurrency: one event per (stream, version).
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id", "version"],
                name="domain_events_stream_version_unique",
            ),
        ]
        indexes = [
            # Duplicate-command detection looks a message id up within one stream.
            models.Index(
                fields=["aggregate_type", "aggregate_id", "triggering_message_id"],
                name="domain_events_triggering_idx",
                condition=~models.Q(triggering_message_id=""),
            ),
            # Followers read in (transaction_id, position) order.
            models.Index(fields=["transaction_id", "position"], name="domain_events_follow_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.aggregate_type}:{self.aggregate_id} v{self.version} {self.event_type}"


class AggregateVersion(models.Model):
    """The current version of one aggregate: the row optimistic concurrency updates."""

    aggregate_type = models.CharField(max_length=255)
    aggregate_id = models.CharField(max_length=255)
    version = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id"], name="domain_events_aggregate_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.aggregate_type}:{self.aggregate_id} v{self.version}"


class Snapshot(models.Model):
    """The latest snapshot of one aggregate: its state as JSON at ``version``.

    ``schema_version`` is the aggregate class's ``snapshot_schema_version`` when it was
    written; a snapshot of another schema is never read as the current one.
    """

    aggregate_type = models.CharField(max_length=255)
    aggregate_id = models.CharField(max_length=255)
    version = models.PositiveBigIntegerField()
    schema_version = models.PositiveSmallIntegerField()
    state = models.JSONField()
    taken_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id"], name="domain_events_snapshot_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"snapshot {self.aggregate_type}:{self.aggregate_id} v{self.version}"


class ProjectionCheckpoint(models.Model):
    """How far one named projection has read the store: the last (transaction id, position)."""

    name = models.CharField(max_length=255, unique=True)
    transaction_id = models.BigIntegerField(default=0)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.transaction_id}:{self.position}"
