"""Errors raised by the event store."""

from domain_events.exceptions import DomainEventError


class EventStoreError(DomainEventError):
    """Base class of the event store's errors."""


class ConcurrencyError(EventStoreError):
    """The aggregate changed since it was loaded: another save got to its version first.

    Nothing was written. Load the aggregate again, re-run the command on the fresh state, and
    save again.
    """


class DuplicateCommandError(EventStoreError):
    """The triggering message id was already recorded for this aggregate: the command that
    message carried has been applied once, so its events were not written again."""

    def __init__(self, message: str, *, triggering_message_id: str) -> None:
        super().__init__(message)
        self.triggering_message_id = triggering_message_id


class AggregateNotFoundError(EventStoreError, LookupError):
    """No event is stored for this aggregate type and id."""


class VersionNotFoundError(AggregateNotFoundError):
    """``get(..., version=N)`` or ``as_of=`` names a point the aggregate's stream has not
    reached (a version past its last event, or a time before its first event)."""


class UnsupportedDatabaseError(EventStoreError):
    """The event store was used on a database that is not PostgreSQL.

    The store relies on PostgreSQL (``xid8`` transaction ids, ``jsonb``, ``ON CONFLICT``):
    on any other database it refuses at first use instead of failing on raw SQL. Domain
    events of ``AggregateRoot`` models and the outbox do not need it.
    """


class InvalidAggregateError(EventStoreError, TypeError, ValueError):
    """An aggregate class's ``aggregate_type`` or an aggregate id breaks the outbox's naming
    rule (``outbox.wire.check_aggregate_type`` / ``check_aggregate_id``), so its events could
    not become integration events with an ordering key. Raised when the class is defined or
    the aggregate is created; a ``TypeError`` and a ``ValueError``, so either ``except`` works.
    """


class SerializationError(EventStoreError, ValueError):
    """An event or a snapshot cannot be written as JSON, or stored JSON cannot be read back."""


class UpcastError(EventStoreError):
    """A stored event has a schema version that no chain of upcasters brings to the current one."""
