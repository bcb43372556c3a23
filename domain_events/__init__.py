"""Two-phase domain events: aggregates record events, saving dispatches them in the transaction.

Event sourcing lives in ``domain_events.eventsourcing``; its public names are exported here.

Names that need Django models are exported lazily (PEP 562) because a model class cannot be
created while Django is still importing the apps listed in ``INSTALLED_APPS`` (this package is
one of them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain_events.events import DomainEvent
from domain_events.eventsourcing.aggregate import EventSourcedAggregate, applies
from domain_events.eventsourcing.exceptions import (
    AggregateNotFoundError,
    ConcurrencyError,
    DuplicateCommandError,
    EventStoreError,
    InvalidAggregateError,
    SerializationError,
    UnsupportedDatabaseError,
    UpcastError,
    VersionNotFoundError,
)
from domain_events.eventsourcing.snapshots import (
    AnyOf,
    EveryNEvents,
    OnEventTypes,
    SnapshotContext,
    SnapshotPolicy,
    TimeSinceLastSnapshot,
)
from domain_events.eventsourcing.upcasting import upcaster
from domain_events.exceptions import CascadeDepthError, DomainEventError, EventTypeConflictError
from domain_events.registry import handler
from outbox.common.lazy import lazy_exports

if TYPE_CHECKING:
    from domain_events.aggregates import AggregateRoot
    from domain_events.dispatcher import dispatch
    from domain_events.eventsourcing.projections import (
        Checkpoint,
        Projection,
        RecordedEvent,
        read_events,
        run_projection,
    )
    from domain_events.eventsourcing.store import EventStore

__all__ = [
    "AggregateNotFoundError",
    "AggregateRoot",
    "AnyOf",
    "CascadeDepthError",
    "Checkpoint",
    "ConcurrencyError",
    "DomainEvent",
    "DomainEventError",
    "DuplicateCommandError",
    "EventSourcedAggregate",
    "EventStore",
    "EventStoreError",
    "EventTypeConflictError",
    "EveryNEvents",
    "InvalidAggregateError",
    "OnEventTypes",
    "Projection",
    "RecordedEvent",
    "SerializationError",
    "SnapshotContext",
    "SnapshotPolicy",
    "TimeSinceLastSnapshot",
    "UnsupportedDatabaseError",
    "UpcastError",
    "VersionNotFoundError",
    "applies",
    "dispatch",
    "handler",
    "read_events",
    "run_projection",
    "upcaster",
]

_LAZY = {
    "AggregateRoot": "domain_events.aggregates",
    "dispatch": "domain_events.dispatcher",
    "EventStore": "domain_events.eventsourcing.store",
    "Checkpoint": "domain_events.eventsourcing.projections",
    "Projection": "domain_events.eventsourcing.projections",
    "RecordedEvent": "domain_events.eventsourcing.projections",
    "read_events": "domain_events.eventsourcing.projections",
    "run_projection": "domain_events.eventsourcing.projections",
}


__getattr__ = lazy_exports(__name__, _LAZY)
