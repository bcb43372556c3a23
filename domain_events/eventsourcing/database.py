"""The event store's one requirement on the database: PostgreSQL.

Its queries use ``xid8`` transaction ids, ``pg_current_snapshot()``, ``jsonb`` functions and
``ON CONFLICT``. Checked on each use (an attribute read, no query), so a project on SQLite gets
one clear error instead of a syntax error from the middle of a query.
"""

from __future__ import annotations

from django.db import connections

from domain_events.eventsourcing.exceptions import UnsupportedDatabaseError


def require_postgresql(alias: str) -> None:
    """Raise ``UnsupportedDatabaseError`` unless the database ``alias`` is PostgreSQL."""
    vendor = connections[alias].vendor
    if vendor != "postgresql":
        raise UnsupportedDatabaseError(unsupported_message(alias, vendor))


def unsupported_message(alias: str, vendor: str) -> str:
    """What the error and the system check say about the database ``alias``."""
    return (
        f"the event store needs PostgreSQL, but database {alias!r} is {vendor}: EventStore,"
        " projections and read_events() cannot run there (domain events of AggregateRoot"
        " models and the outbox can)"
    )
