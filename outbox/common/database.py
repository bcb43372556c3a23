"""Which database holds the outbox: the one place that tells PostgreSQL from the rest.

PostgreSQL gets the named queries, SKIP LOCKED claims, LISTEN/NOTIFY wake-ups and the prepared
INSERT; any other database (SQLite, for development) gets ORM code, polling, and one relay.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from django.db import connections, router
from django.utils import timezone

__all__ = ["Prepared", "database_now", "fetch_prepared", "is_postgresql", "outbox_alias"]


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


class Prepared(NamedTuple):
    """What a prepared statement returned: its rows, their column names, the row count."""

    rows: list[tuple[Any, ...]]
    columns: tuple[str, ...]
    rowcount: int


def fetch_prepared(alias: str, sql: str, params: Mapping[str, Any] | Sequence[Any]) -> Prepared:
    """Run ``sql`` as a server-side prepared statement on the connection of ``alias`` (in its
    current transaction, if any); return its rows, column names and row count.

    PostgreSQL then parses and plans the statement once per connection, not at every call.
    Django opens psycopg connections with ``prepare_threshold=None`` (its default, for
    connection poolers), under which psycopg ignores ``execute(prepare=True)``: the threshold is
    lifted for this one statement only, so that no query of the application's is ever
    prepared. A project that set a threshold of its own in ``OPTIONS`` keeps it. The callers
    use this only while ``OUTBOX["PREPARED_INSERT"]`` is on (off behind a pooler that cannot
    keep prepared statements).
    """
    connection = connections[alias]
    connection.ensure_connection()
    raw: psycopg.Connection[Any] = connection.connection
    threshold = raw.prepare_threshold
    # wrap_database_errors: Django's exceptions and connection bookkeeping, as through Django's
    # own cursor (which binds parameters on the client and so cannot prepare).
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        if threshold is None:
            raw.prepare_threshold = sys.maxsize  # only prepare=True statements qualify
        try:
            cursor.execute(sql, params, prepare=True)
        finally:
            raw.prepare_threshold = threshold
        description = cursor.description
        rows = cursor.fetchall() if description is not None else []
        columns = tuple(column.name for column in description or ())
        return Prepared(rows, columns, cursor.rowcount)
