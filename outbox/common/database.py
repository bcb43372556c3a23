"""Which database holds the outbox: the one place that tells PostgreSQL from the rest.

PostgreSQL gets the named queries, SKIP LOCKED claims, LISTEN/NOTIFY wake-ups and the prepared
INSERT; any other database (SQLite, for development) gets ORM code, polling, and one relay.
"""

from __future__ import annotations

from django.db import connections, router

__all__ = ["is_postgresql", "outbox_alias"]


def outbox_alias(using: str | None = None) -> str:
    """The database alias of the outbox table: ``using`` if given, else the router's choice."""
    if using:
        return using
    from outbox.models import OutboxMessage  # the app registry must be ready first

    return router.db_for_write(OutboxMessage)


def is_postgresql(alias: str | None = None) -> bool:
    """Whether the database ``alias`` (default: the outbox's) is PostgreSQL."""
    return connections[outbox_alias(alias)].vendor == "postgresql"
