"""Projections: read models built by replaying the store in global order.

The global order is (transaction id, position). Positions come from a sequence when events are
inserted, not when they commit, so a reader that went by position alone could pass a position
whose writer commits later and never come back for it. Readers here only see events of
transactions older than every transaction still running (``pg_snapshot_xmin``), and order by
transaction id first: an event that commits late belongs to a transaction at or above that
horizon, so it always sorts after every checkpoint a reader has already passed.

The price is latency, not loss: a follower waits for the oldest open transaction on the
PostgreSQL server (any database) before it reads past it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from domain_events.events import DomainEvent
from domain_events.eventsourcing.database import require_postgresql
from domain_events.eventsourcing.queries import queries
from domain_events.eventsourcing.serialization import event_from_data
from domain_events.eventsourcing.upcasting import upcast
from domain_events.models import ProjectionCheckpoint
from outbox.common.sql import rows_as

_CHECKPOINT_TEXT = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True, order=True)
class Checkpoint:
    """A place in the global order: after the event at (``transaction_id``, ``position``).

    Written and parsed as ``"<transaction_id>:<position>"``; ``Checkpoint()`` is the start.
    """

    transaction_id: int = 0
    position: int = 0

    def __str__(self) -> str:
        return f"{self.transaction_id}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """``Checkpoint`` from its ``"<transaction_id>:<position>"`` text."""
        match = _CHECKPOINT_TEXT.match(text.strip())
        if match is None:
            raise ValueError(f"a checkpoint is written <transaction_id>:<position>, got {text!r}")
        return cls(int(match[1]), int(match[2]))


START = Checkpoint()


@dataclass(frozen=True)
class RecordedEvent:
    """A stored event, decoded and upcast, with where it sits in its stream and in the store."""

    checkpoint: Checkpoint
    aggregate_type: str
    aggregate_id: str
    version: int
    event: DomainEvent
    metadata: dict[str, Any]
    triggering_message_id: str | None
    recorded_at: dt.datetime

    @property
    def position(self) -> int:
        """The event's unique, insert-ordered number."""
        return self.checkpoint.position


def read_events(
    after: Checkpoint = START, *, limit: int = 500, using: str = DEFAULT_DB_ALIAS
) -> list[RecordedEvent]:
    """Up to ``limit`` committed events after ``after``, in global order, up to the horizon.

    The horizon is the oldest transaction still running: events past it are returned by a
    later call, never skipped. Call outside a transaction that has written anything, or the
    horizon stops at the caller's own transaction.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    require_postgresql(using)
    with connections[using].cursor() as cursor:
        cursor.execute(
            queries["read_all"],
            {"transaction_id": after.transaction_id, "position": after.position, "limit": limit},
        )
        rows = rows_as(cursor, StoredEventRow)
    return [recorded_from_row(row) for row in rows]


def count_events_after(after: Checkpoint = START, *, using: str = DEFAULT_DB_ALIAS) -> int:
    """How many stored events sort after ``after`` (committed ones, horizon not applied)."""
    require_postgresql(using)
    with connections[using].cursor() as cursor:
        cursor.execute(
            queries["count_after"],
            {"transaction_id": after.transaction_id, "position": after.position},
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


class Projection:
    """A read model fed by the store's events in global order.

    Subclasses set ``name`` (the key of their checkpoint) and implement ``handle()``;
    ``reset()`` empties the read model before a rebuild. ``handle()`` runs in the same
    transaction as the checkpoint update, so a read model in the same database is updated
    exactly once per event.
    """

    name: ClassVar[str] = ""

    def handle(self, recorded: RecordedEvent) -> None:
        """Apply one event to the read model."""
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the read model; called in the transaction that starts a rebuild."""


@dataclass(frozen=True)
class ProjectionProgress:
    """Where a projection run stands after a batch."""

    processed: int
    checkpoint: Checkpoint
    remaining: int


def run_projection(
    projection: Projection,
    *,
    rebuild: bool = False,
    after: Checkpoint | None = None,
    batch_size: int = 500,
    on_batch: Callable[[ProjectionProgress], None] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> ProjectionProgress:
    """Feed ``projection`` every event after its checkpoint, batch by batch, until caught up.

    Each batch runs in one transaction that locks the projection's checkpoint row (so two
    runs of one projection take turns), applies the events and moves the checkpoint.
    ``rebuild=True`` calls ``reset()`` and starts from the beginning; ``after`` starts after
    the given checkpoint instead of the stored one. ``on_batch`` is called after each commit.
    Returns the progress when no committed event is left below the horizon.
    """
    if not projection.name:
        raise ValueError(f"{type(projection).__qualname__}.name must be set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    require_postgresql(using)
    start: Checkpoint | None = START if rebuild else after
    processed = 0
    with transaction.atomic(using=using):
        row = _lock_checkpoint(projection.name, using)
        if rebuild:
            projection.reset()
        if start is not None:
            _store_checkpoint(row, start)
        checkpoint = Checkpoint(row.transaction_id, row.position)
    remaining = count_events_after(checkpoint, using=using)
    while True:
        # The batch is read before the transaction writes anything, so the horizon is not held
        # back by this transaction itself.
        batch = read_events(checkpoint, limit=batch_size, using=using)
        if not batch:
            break
        with transaction.atomic(using=using):
            row = _lock_checkpoint(projection.name, using)
            if Checkpoint(row.transaction_id, row.position) != checkpoint:
                # Another run of this projection moved it meanwhile: continue from there.
                checkpoint = Checkpoint(row.transaction_id, row.position)
                continue
            for recorded in batch:
                projection.handle(recorded)
            checkpoint = batch[-1].checkpoint
            _store_checkpoint(row, checkpoint)
        processed += len(batch)
        remaining = max(remaining - len(batch), 0)
        if on_batch is not None:
            on_batch(ProjectionProgress(processed, checkpoint, remaining))
    return ProjectionProgress(processed, checkpoint, count_events_after(checkpoint, using=using))


def _lock_checkpoint(name: str, using: str) -> ProjectionCheckpoint:
    ProjectionCheckpoint.objects.using(using).get_or_create(name=name)
    return ProjectionCheckpoint.objects.using(using).select_for_update().get(name=name)


def _store_checkpoint(row: ProjectionCheckpoint, checkpoint: Checkpoint) -> None:
    row.transaction_id = checkpoint.transaction_id
    row.position = checkpoint.position
    row.save(update_fields=["transaction_id", "position", "updated_at"])


@dataclass(frozen=True)
class StoredEventRow:
    """One row of the ``read_all`` and ``stream_events`` queries, by column name."""

    position: int
    transaction_id: int
    aggregate_type: str
    aggregate_id: str
    version: int
    event_type: str
    schema_version: int
    event_id: UUID | str
    occurred_at: dt.datetime
    data: Any
    metadata: Any
    triggering_message_id: str | None
    recorded_at: dt.datetime


def recorded_from_row(row: StoredEventRow) -> RecordedEvent:
    """The ``RecordedEvent`` of one stored row: its data upcast and decoded."""
    # Django loads jsonb as text so that JSONField can decode it; raw queries decode here.
    data = json.loads(row.data) if isinstance(row.data, str) else row.data
    metadata = json.loads(row.metadata) if isinstance(row.metadata, str) else row.metadata
    event_id = row.event_id
    event = event_from_data(
        row.event_type,
        upcast(row.event_type, row.schema_version, data),
        event_id=event_id if isinstance(event_id, UUID) else UUID(str(event_id)),
        occurred_at=row.occurred_at,
    )
    return RecordedEvent(
        checkpoint=Checkpoint(int(row.transaction_id), int(row.position)),
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        version=int(row.version),
        event=event,
        metadata=metadata,
        triggering_message_id=row.triggering_message_id or None,
        recorded_at=row.recorded_at,
    )
