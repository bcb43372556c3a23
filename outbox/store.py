"""The relay's database side: claim, mark published, schedule a retry, release, and wake up.

Only this module talks to the outbox table on the relay's behalf; every statement is one of
the named queries in ``outbox/sql/queries.sql`` and runs in autocommit, so no transaction or
row lock outlives the statement (and none is ever held while the broker is being talked to).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.backends.utils import CursorWrapper

from outbox.models import OutboxMessage

__all__ = [
    "NOTIFY_CHANNEL",
    "ClaimedMessage",
    "ReadyListener",
    "RetryResult",
    "claim",
    "mark_published",
    "mark_published_unroutable",
    "queries",
    "release",
    "schedule_retry",
]

# The channel the AFTER INSERT trigger of migration 0002_relay notifies.
NOTIFY_CHANNEL = "outbox_message_ready"

_QUERY_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """The named queries of ``outbox/sql/queries.sql``, by name."""
    text = resources.files("outbox").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@dataclass(frozen=True)
class ClaimedMessage:
    """A leased outbox row, with what the publisher needs to send it."""

    id: int
    message_id: UUID
    event_type: str
    routing_key: str
    exchange: str
    aggregate_type: str
    aggregate_id: str
    payload_json: str
    headers: dict[str, Any]
    created_at: datetime
    position: int
    attempts: int


@dataclass(frozen=True)
class RetryResult:
    """Ids that will be tried again, and ids that used their last attempt and are failed."""

    retried: list[int]
    failed: list[int]


def claim(
    *, owner: str, limit: int, lease_seconds: float, using: str | None = None
) -> list[ClaimedMessage]:
    """Lease up to ``limit`` publishable rows for ``owner``, in position order.

    Per ordering key only the oldest unpublished row is ever returned (see the ``claim``
    query), so a batch never holds two rows of one key.
    """
    rows = _execute(
        "claim",
        {"owner": owner, "limit": limit, "lease_seconds": lease_seconds},
        using=using,
    )
    claimed = [
        ClaimedMessage(
            id=row[0],
            message_id=row[1],
            event_type=row[2],
            routing_key=row[3],
            exchange=row[4],
            aggregate_type=row[5],
            aggregate_id=row[6],
            payload_json=row[7],
            headers=json.loads(row[8]),
            created_at=row[9],
            position=row[10],
            attempts=row[11],
        )
        for row in rows
    ]
    claimed.sort(key=lambda message: message.position)
    return claimed


def mark_published(ids: Sequence[int], *, using: str | None = None) -> int:
    """Mark the rows the broker confirmed as published, in one statement; return how many."""
    if not ids:
        return 0
    return _execute_count("mark_published", {"ids": list(ids)}, using=using)


def mark_published_unroutable(errors: Mapping[int, str], *, using: str | None = None) -> int:
    """Mark rows the broker dropped as unroutable published, keeping the reason in
    ``last_error`` (``ON_UNROUTABLE = "record"``); return how many."""
    if not errors:
        return 0
    return _execute_count(
        "mark_published_unroutable",
        {"ids": list(errors), "errors": list(errors.values())},
        using=using,
    )


def schedule_retry(
    errors: Mapping[int, str],
    *,
    owner: str,
    max_attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float,
    using: str | None = None,
) -> RetryResult:
    """Count one attempt for each refused row (id -> error text) that ``owner`` still leases.

    A row is retried after an exponential backoff with jitter, or marked failed once it has
    used ``max_attempts``; the error is kept in ``last_error`` either way.
    """
    if not errors:
        return RetryResult([], [])
    rows = _execute(
        "schedule_retry",
        {
            "ids": list(errors),
            "errors": list(errors.values()),
            "owner": owner,
            "max_attempts": max_attempts,
            "backoff": float(backoff_seconds),
            "backoff_max": float(backoff_max_seconds),
        },
        using=using,
    )
    failed = sorted(row[0] for row in rows if row[1] == OutboxMessage.Status.FAILED)
    retried = sorted(row[0] for row in rows if row[1] == OutboxMessage.Status.READY)
    return RetryResult(retried, failed)


def release(ids: Sequence[int], *, owner: str, using: str | None = None) -> int:
    """Give back rows ``owner`` leased but could not get confirmed, attempts unchanged."""
    if not ids:
        return 0
    return _execute_count("release", {"ids": list(ids), "owner": owner}, using=using)


class ReadyListener:
    """A dedicated autocommit connection LISTENing for "rows committed" notifications.

    Django's own connection cannot LISTEN for us (it may sit in a transaction, and Django
    does not expose notifications), so this one is opened from the same settings.
    """

    def __init__(self, using: str | None = None) -> None:
        self._alias = using or router.db_for_write(OutboxMessage)
        self._connection: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True) or ``timeout`` seconds pass (False).

        Notifications that arrived while the caller was busy are returned at once. Raises
        ``psycopg.OperationalError`` when the connection is lost; the next call reconnects.
        """
        connection = self._connect()
        try:
            received = False
            for _ in connection.notifies(timeout=timeout, stop_after=1):
                received = True
            # Drain whatever else is already buffered: one wake-up covers them all.
            for _ in connection.notifies(timeout=0):
                pass
            return received
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        """Close the listening connection (the next ``wait`` opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            params = connections[self._alias].get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            params["application_name"] = "outbox-relay-listener"
            connection = psycopg.connect(**params, autocommit=True)
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._connection = connection
        return self._connection


def _execute(name: str, params: Mapping[str, Any], *, using: str | None) -> list[tuple[Any, ...]]:
    with _cursor(using) as cursor:
        cursor.execute(queries()[name], params)
        return list(cursor.fetchall())


def _execute_count(name: str, params: Mapping[str, Any], *, using: str | None) -> int:
    with _cursor(using) as cursor:
        cursor.execute(queries()[name], params)
        return int(cursor.rowcount)


def _cursor(using: str | None) -> CursorWrapper:
    alias = using or router.db_for_write(OutboxMessage)
    connection = transaction.get_connection(alias)
    if connection.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"the outbox relay needs PostgreSQL; database {alias!r} is {connection.vendor}"
            " (SKIP LOCKED claims, commit-ordered positions and LISTEN/NOTIFY)"
        )
    if connection.in_atomic_block:
        # Inside a caller's transaction a claim would keep its row locks until that
        # transaction ends, possibly across the whole publish: exactly what the relay avoids.
        raise RuntimeError(
            "the outbox relay must not run inside transaction.atomic(); it commits each"
            " statement on its own"
        )
    cursor: CursorWrapper = connection.cursor()
    return cursor
