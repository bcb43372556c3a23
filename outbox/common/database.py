"""Which database holds the outbox: the one place that tells PostgreSQL from the rest.

PostgreSQL gets the named queries, SKIP LOCKED claims, LISTEN/NOTIFY wake-ups and the prepared
INSERT; any other database (SQLite, for development) gets ORM code, polling, and one relay.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connections, router
from django.utils import timezone

__all__ = ["database_now", "is_postgresql", "outbox_alias"]


def outbox_alias(using: str | None = None) -> str:
    """The database alias of the outbox table: ``using`` if given, else the router's choice."""
    if using:
        return using
    from outbox.models import OutboxMessage  # the app registry must be ready first

    return router.db_for_write(OutboxMessage)


def is_postgresql(alias: str | None = None) -> bool:
    """Whether the database ``alias`` (default: the outbox's) is PostgreSQL."""
    return connections[outbox_alias(alias)].vendor == "postgresql"


def database_now(alias: str | None = None) -> datetime:
    """The current time by the clock of the outbox's database (``alias``).

    The relay's claim compares ``next_attempt_at`` and leases with PostgreSQL's ``now()``, and
    the rows' timestamps are written by the database too: whatever compares with them must
    read the same clock, or an application server whose clock is off shows (or waits) the
    difference. SQLite has no server: its clock is this machine's, the application's own.
    """
    if not is_postgresql(alias):
        return timezone.now()
    with connections[outbox_alias(alias)].cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        now: datetime = cursor.fetchone()[0]
    return now
