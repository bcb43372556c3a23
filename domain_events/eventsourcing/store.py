"""``EventStore``: the repository of event-sourced aggregates.

``get()`` loads the latest usable snapshot, then only the events after it (``version=`` /
``as_of=``: up to a point in the past); ``history()`` reads one stream as recorded events.
``save()`` appends the pending events in one transaction: it moves the aggregate's version row
from the version the aggregate was loaded at (optimistic concurrency), checks the triggering
message id, writes all events in one multi-row INSERT, takes a snapshot when the policy says
so, writes the events to the outbox when the class publishes them, and dispatches the events
to the domain-event handlers, all before commit. Any failure rolls all of it back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from domain_events.dispatcher import dispatch
from domain_events.events import DomainEvent
from domain_events.eventsourcing.aggregate import EventSourcedAggregate
from domain_events.eventsourcing.database import require_postgresql
from domain_events.eventsourcing.exceptions import (
    AggregateNotFoundError,
    ConcurrencyError,
    DuplicateCommandError,
    SerializationError,
    VersionNotFoundError,
)
from domain_events.eventsourcing.projections import (
    RecordedEvent,
    StoredEventRow,
    recorded_from_row,
)
from domain_events.eventsourcing.publishing import (
    require_shared_database,
    stored_event_messages,
)
from domain_events.eventsourcing.queries import queries
from domain_events.eventsourcing.serialization import (
    event_data,
    event_from_data,
    event_json,
    to_json_text,
)
from domain_events.eventsourcing.snapshots import SnapshotContext
from domain_events.eventsourcing.upcasting import current_schema_version, upcast
from domain_events.models import Snapshot, StoredEvent
from outbox.common.sql import rows_as
from outbox.writer import Message, publish_many

logger = logging.getLogger("domain_events")

AggregateT = TypeVar("AggregateT", bound=EventSourcedAggregate)


class EventStore:
    """Loads and saves event-sourced aggregates in the database ``using``."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def get(
        self,
        aggregate_class: type[AggregateT],
        aggregate_id: str | int | UUID,
        *,
        version: int | None = None,
        as_of: dt.datetime | None = None,
    ) -> AggregateT:
        """Rebuild the aggregate from its latest snapshot (if usable) and the events after it.

        ``version=N`` rebuilds it as it was after its N-th event; ``as_of=<aware datetime>``
        as it was after the last event recorded at or before that time (the store's
        ``recorded_at``, the database clock). Either uses the snapshot when it was taken at or
        before that point, else replays from the first event. The result is the past state:
        saving it raises ``ConcurrencyError`` unless it is also the current version.

        Raises ``AggregateNotFoundError`` when the aggregate has no stored event, and
        ``VersionNotFoundError`` (a subclass) when its stream has no such version or did not
        exist yet at ``as_of``. ``TypeError`` / ``ValueError`` for both given, a version below
        1, or a naive datetime.
        """
        require_postgresql(self.using)
        _check_point(version, as_of)
        aggregate = aggregate_class(aggregate_id)
        key = {"aggregate_type": aggregate_class.aggregate_type, "aggregate_id": aggregate.id}
        if as_of is not None:
            version = self._version_at(key, as_of)
        after = 0
        if aggregate_class.snapshot_policy is not None:
            after = self._restore_snapshot(aggregate, key, at_most=version)
        events = StoredEvent.objects.using(self.using).filter(**key, version__gt=after)
        if version is not None:
            events = events.filter(version__lte=version)
        rows = events.order_by("version").values_list(
            "version", "event_type", "schema_version", "event_id", "occurred_at", "data"
        )
        replayed = 0
        # One plain query: a server-side cursor (.iterator()) would cost three round trips.
        for number, event_type, schema_version, event_id, occurred_at, data in rows:
            event = event_from_data(
                event_type,
                upcast(event_type, schema_version, data),
                event_id=event_id,
                occurred_at=occurred_at,
            )
            aggregate._replay(event, number)
            replayed += 1
        if after == 0 and replayed == 0:
            raise AggregateNotFoundError(
                f"no {aggregate_class.aggregate_type} with id {aggregate.id!r} is stored"
            )
        if version is not None and aggregate.version < version:
            raise VersionNotFoundError(
                f"{aggregate_class.aggregate_type} {aggregate.id!r} has no version {version}:"
                f" its stream ends at version {aggregate.version}"
            )
        return aggregate

    def history(
        self, aggregate_class: type[EventSourcedAggregate], aggregate_id: str | int | UUID
    ) -> list[RecordedEvent]:
        """The audit trail of one aggregate: its stored events, oldest first, as
        ``RecordedEvent`` (version, event, metadata, triggering message id, recorded_at).

        Events are upcast to their current classes, as ``get()`` replays them. Raises
        ``AggregateNotFoundError`` when the aggregate has no stored event.
        """
        require_postgresql(self.using)
        aggregate_type = aggregate_class.aggregate_type
        # The class checks and normalises the id exactly as get() and save() do.
        stored_id = aggregate_class(aggregate_id).id
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                queries["stream_events"],
                {"aggregate_type": aggregate_type, "aggregate_id": stored_id},
            )
            rows = rows_as(cursor, StoredEventRow)
        if not rows:
            raise AggregateNotFoundError(f"no {aggregate_type} with id {stored_id!r} is stored")
        return [recorded_from_row(row) for row in rows]

    def save(
        self,
        aggregate: EventSourcedAggregate,
        *,
        triggering_message_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Append the aggregate's pending events, or raise and write nothing.

        ``triggering_message_id`` is the id of the message whose handling ran the command (an
        inbox message id, a request id). If an earlier save of this aggregate recorded the same
        id, ``DuplicateCommandError`` is raised and nothing is written: a re-delivered message
        cannot apply its events twice. ``metadata`` (for example ``correlation_id`` and
        ``causation_id``) is stored as JSON with each event. A snapshot is written when the
        class's ``snapshot_policy`` says so, and with ``publish_stored_events`` each event is
        also written to the outbox, all in the same transaction.

        Raises ``ConcurrencyError`` if the aggregate was changed by another save since it was
        loaded. Runs in ``transaction.atomic`` (a savepoint inside the caller's transaction);
        domain-event handlers run inside it, before commit, and their failure rolls it back.
        On success the pending events are cleared; on failure they stay pending.
        """
        require_postgresql(self.using)
        pending = list(aggregate.pending_events)
        if not pending:
            return
        if triggering_message_id is not None and (
            not isinstance(triggering_message_id, str) or not 1 <= len(triggering_message_id) <= 255
        ):
            raise ValueError("triggering_message_id must be a string of 1-255 characters")
        aggregate_type = type(aggregate).aggregate_type
        expected = aggregate.stored_version
        # Everything is encoded before the transaction starts: bad data fails with nothing
        # written and no lock taken.
        append_parameters: dict[str, Any] = {
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate.id,
            "metadata": to_json_text(dict(metadata or {}), what="event metadata"),
            "triggering_message_id": triggering_message_id or "",
            "events": _event_rows_json(pending, first_version=expected + 1),
        }
        snapshot_state = self._due_snapshot(aggregate, expected)
        messages: list[Message] = []
        if type(aggregate).publish_stored_events:
            require_shared_database(aggregate, self.using)
            messages = stored_event_messages(aggregate, pending, first_version=expected + 1)
        key = {"aggregate_type": aggregate_type, "aggregate_id": aggregate.id}
        with transaction.atomic(using=self.using), connections[self.using].cursor() as cursor:
            if expected == 0:
                cursor.execute(queries["create_stream"], {**key, "new_version": aggregate.version})
            else:
                cursor.execute(
                    queries["advance_stream"],
                    {**key, "new_version": aggregate.version, "expected_version": expected},
                )
            if cursor.fetchone() is None:
                raise ConcurrencyError(
                    f"{aggregate_type} {aggregate.id!r} was changed by another save since it was"
                    f" loaded at version {expected}; nothing was written: load it again and"
                    " retry the command"
                )
            if triggering_message_id is not None:
                cursor.execute(
                    queries["command_seen"], {**key, "triggering_message_id": triggering_message_id}
                )
                row = cursor.fetchone()
                if row is not None and row[0]:
                    raise DuplicateCommandError(
                        f"{aggregate_type} {aggregate.id!r} already recorded the events of"
                        f" message {triggering_message_id!r}; nothing was written",
                        triggering_message_id=triggering_message_id,
                    )
            cursor.execute(queries["append_events"], append_parameters)
            if snapshot_state is not None:
                cursor.execute(
                    queries["save_snapshot"],
                    {
                        **key,
                        "version": aggregate.version,
                        "schema_version": type(aggregate).snapshot_schema_version,
                        "state": snapshot_state,
                    },
                )
            if messages:
                # Before dispatch: the rows of in-transaction handlers come after the events'.
                publish_many(messages, using=self.using)
            dispatch(pending, using=self.using)
        aggregate._mark_saved(len(pending))
        if snapshot_state is not None:
            aggregate._note_snapshot(expected + len(pending), timezone.now())

    def _due_snapshot(self, aggregate: EventSourcedAggregate, expected: int) -> str | None:
        # The policy decides; the state is taken before anything is written, so a state that
        # is not JSON fails the save cleanly.
        policy = type(aggregate).snapshot_policy
        if policy is None:
            return None
        context = SnapshotContext(
            aggregate=aggregate,
            previous_version=expected,
            version=aggregate.version,
            new_events=aggregate.pending_events,
            last_snapshot_version=aggregate._snapshot_version,
            last_snapshot_at=aggregate._snapshot_taken_at,
            now=timezone.now(),
        )
        if not policy.due(context):
            return None
        state = aggregate.snapshot_state()
        if not isinstance(state, dict):
            raise SerializationError(
                f"{type(aggregate).__qualname__}.snapshot_state() must return a dict,"
                f" got {type(state).__name__}"
            )
        return to_json_text(state, what="snapshot state")

    def _version_at(self, key: dict[str, str], as_of: dt.datetime) -> int:
        # recorded_at grows with the version within a stream: saves of one aggregate are
        # serialized by its version row, and each INSERT is stamped when it runs.
        events = StoredEvent.objects.using(self.using).filter(**key)
        version = (
            events.filter(recorded_at__lte=as_of)
            .order_by("-version")
            .values_list("version", flat=True)
            .first()
        )
        if version is not None:
            return int(version)
        first = events.order_by("version").values_list("recorded_at", flat=True).first()
        if first is None:
            raise AggregateNotFoundError(
                f"no {key['aggregate_type']} with id {key['aggregate_id']!r} is stored"
            )
        raise VersionNotFoundError(
            f"{key['aggregate_type']} {key['aggregate_id']!r} did not exist yet at"
            f" {as_of.isoformat()}: its first event was recorded at {first.isoformat()}"
        )

    def _restore_snapshot(
        self, aggregate: EventSourcedAggregate, key: dict[str, str], *, at_most: int | None = None
    ) -> int:
        snapshot = (
            Snapshot.objects.using(self.using)
            .filter(**key)
            .values_list("version", "schema_version", "state", "taken_at")
            .first()
        )
        if snapshot is None:
            return 0
        version, schema_version, state, taken_at = snapshot
        if at_most is not None and version > at_most:
            # Taken after the point asked for: the state then is rebuilt from the events.
            return 0
        if schema_version != type(aggregate).snapshot_schema_version:
            # Never read state of another shape: replaying every event is slower but right.
            logger.info(
                "ignoring %s:%s snapshot of schema %s (the class is at %s); replaying events",
                key["aggregate_type"],
                key["aggregate_id"],
                schema_version,
                type(aggregate).snapshot_schema_version,
            )
            return 0
        aggregate.restore_snapshot(state)
        aggregate._set_stored_version(version)
        aggregate._note_snapshot(version, taken_at)
        return int(version)


def _check_point(version: object, as_of: object) -> None:
    """Refuse a point in time that cannot be read, before any query."""
    if version is not None and as_of is not None:
        raise TypeError("get() takes version= or as_of=, not both")
    if version is not None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(f"version must be an int, got {version!r}")
        if version < 1:
            raise ValueError(f"version must be at least 1 (the first event), got {version}")
    if as_of is not None:
        if not isinstance(as_of, dt.datetime):
            raise TypeError(f"as_of must be a datetime, got {as_of!r}")
        if timezone.is_naive(as_of):
            raise ValueError(
                f"as_of must be an aware datetime, got the naive {as_of.isoformat()}: give it a"
                " tzinfo (e.g. datetime.UTC) or use django.utils.timezone.make_aware()"
            )


def _event_rows_json(events: list[DomainEvent], *, first_version: int) -> str:
    """The JSON array of rows that the append_events query reads, one per event."""
    rows = [
        {
            "event_id": str(event.event_id),
            "version": version,
            "event_type": event.event_type,
            "schema_version": current_schema_version(event.event_type),
            "occurred_at": event.occurred_at.isoformat(),
            "data": event_data(event),
        }
        for version, event in enumerate(events, first_version)
    ]
    try:
        # One encoder pass for the whole save: per-event passes cost more than the INSERT's
        # parsing of the result (docs/performance.md).
        return to_json_text(rows, what="events")
    except SerializationError:
        for event in events:
            event_json(event)  # raises naming the event type that cannot be stored
        raise
