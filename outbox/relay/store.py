"""The relay's database side: claim, mark published, schedule a retry, release, and wake up.

Only this module talks to the outbox table on the relay's behalf. On PostgreSQL every
statement is one of the named queries in ``outbox/sql/queries.sql`` and runs in autocommit,
so no transaction or row lock outlives the statement (and none is ever held while the broker
is being talked to). Any other database (SQLite, for development) gets the same operations
written with the ORM, each in its own short transaction: a single relay only, polling only
(docs/concepts.md, "Databases other than PostgreSQL"). The choice is made once per call, in
``_backend``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import psycopg
from django.db import connections, router, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from outbox.common.jsontext import encode
from outbox.common.sql import load_queries
from outbox.models import OutboxMessage

__all__ = [
    "NOTIFY_CHANNEL",
    "ClaimedMessage",
    "ReadyListener",
    "RetryResult",
    "claim",
    "listens_for_commits",
    "mark_published",
    "mark_published_unroutable",
    "queries",
    "release",
    "schedule_retry",
]

# The channel the AFTER INSERT trigger of migration 0002_relay notifies.
NOTIFY_CHANNEL = "outbox_message_ready"


def queries() -> dict[str, str]:
    """The named queries of ``outbox/sql/queries.sql``, by name."""
    return load_queries("outbox", "sql/queries.sql")


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
    """Lease up to ``limit`` publishable rows for ``owner``, oldest first.

    Per ordering key only the oldest unpublished row is ever returned (see the ``claim``
    query), so a batch never holds two rows of one key.
    """
    backend, alias = _backend(using)
    return backend.claim(alias, owner=owner, limit=limit, lease_seconds=lease_seconds)


def mark_published(ids: Sequence[int], *, using: str | None = None) -> int:
    """Mark the rows the broker confirmed as published, in one statement; return how many."""
    if not ids:
        return 0
    backend, alias = _backend(using)
    return backend.mark_published(alias, list(ids))


def mark_published_unroutable(errors: Mapping[int, str], *, using: str | None = None) -> int:
    """Mark rows the broker dropped as unroutable published, keeping the reason in
    ``last_error`` (``ON_UNROUTABLE = "record"``); return how many."""
    if not errors:
        return 0
    backend, alias = _backend(using)
    return backend.mark_published_unroutable(alias, dict(errors))


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
    backend, alias = _backend(using)
    return backend.schedule_retry(
        alias,
        dict(errors),
        owner=owner,
        max_attempts=max_attempts,
        backoff=float(backoff_seconds),
        backoff_max=float(backoff_max_seconds),
    )


def release(ids: Sequence[int], *, owner: str, using: str | None = None) -> int:
    """Give back rows ``owner`` leased but could not get confirmed, attempts unchanged."""
    if not ids:
        return 0
    backend, alias = _backend(using)
    return backend.release(alias, list(ids), owner=owner)


def listens_for_commits(using: str | None = None) -> bool:
    """Whether the relay can be woken by committed rows (PostgreSQL LISTEN/NOTIFY); on any
    other database it only polls, and only one relay may run (docs/concepts.md)."""
    alias = using or router.db_for_write(OutboxMessage)
    return connections[alias].vendor == "postgresql"


class ReadyListener:
    """A dedicated autocommit connection LISTENing for "rows committed" notifications.

    Django's own connection cannot LISTEN for us (it may sit in a transaction, and Django
    does not expose notifications), so this one is opened from the same settings. Other
    databases have no notifications: there ``wait`` only sleeps, and the relay polls.
    """

    def __init__(self, using: str | None = None) -> None:
        self._alias = using or router.db_for_write(OutboxMessage)
        self._connection: psycopg.Connection[Any] | None = None
        # Other databases have nothing to listen to: wait() just sleeps, so the relay polls.
        self._listens = listens_for_commits(self._alias)

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True) or ``timeout`` seconds pass (False).

        Notifications that arrived while the caller was busy are returned at once. Raises
        ``psycopg.OperationalError`` when the connection is lost; the next call reconnects.
        Without PostgreSQL it only sleeps ``timeout`` seconds and returns False.
        """
        if not self._listens:
            time.sleep(timeout)
            return False
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


def _backend(using: str | None) -> tuple[_Backend, str]:
    """The implementation for the outbox's database, and its alias: the one place that
    tells PostgreSQL from the rest."""
    alias = using or router.db_for_write(OutboxMessage)
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block:
        # Inside a caller's transaction a claim would keep its row locks until that
        # transaction ends, possibly across the whole publish: exactly what the relay avoids.
        raise RuntimeError(
            "the outbox relay must not run inside transaction.atomic(); it commits each"
            " statement on its own"
        )
    if connection.vendor == "postgresql":
        return _SQL, alias
    return _ORM, alias


class _Backend(Protocol):
    """The relay's operations on one database; the public functions above document them."""

    def claim(
        self, alias: str, *, owner: str, limit: int, lease_seconds: float
    ) -> list[ClaimedMessage]: ...

    def mark_published(self, alias: str, ids: list[int]) -> int: ...

    def mark_published_unroutable(self, alias: str, errors: dict[int, str]) -> int: ...

    def schedule_retry(
        self,
        alias: str,
        errors: dict[int, str],
        *,
        owner: str,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
    ) -> RetryResult: ...

    def release(self, alias: str, ids: list[int], *, owner: str) -> int: ...


class _PostgreSQLBackend:
    """The named queries: one autocommit statement per operation, SKIP LOCKED claims."""

    def claim(
        self, alias: str, *, owner: str, limit: int, lease_seconds: float
    ) -> list[ClaimedMessage]:
        rows = self._rows(
            alias, "claim", {"owner": owner, "limit": limit, "lease_seconds": lease_seconds}
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

    def mark_published(self, alias: str, ids: list[int]) -> int:
        return self._count(alias, "mark_published", {"ids": ids})

    def mark_published_unroutable(self, alias: str, errors: dict[int, str]) -> int:
        return self._count(
            alias,
            "mark_published_unroutable",
            {"ids": list(errors), "errors": list(errors.values())},
        )

    def schedule_retry(
        self,
        alias: str,
        errors: dict[int, str],
        *,
        owner: str,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
    ) -> RetryResult:
        rows = self._rows(
            alias,
            "schedule_retry",
            {
                "ids": list(errors),
                "errors": list(errors.values()),
                "owner": owner,
                "max_attempts": max_attempts,
                "backoff": backoff,
                "backoff_max": backoff_max,
            },
        )
        failed = sorted(row[0] for row in rows if row[1] == OutboxMessage.Status.FAILED)
        retried = sorted(row[0] for row in rows if row[1] == OutboxMessage.Status.READY)
        return RetryResult(retried, failed)

    def release(self, alias: str, ids: list[int], *, owner: str) -> int:
        return self._count(alias, "release", {"ids": ids, "owner": owner})

    @staticmethod
    def _rows(alias: str, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with _cursor(alias) as cursor:
            cursor.execute(queries()[name], params)
            return list(cursor.fetchall())

    @staticmethod
    def _count(alias: str, name: str, params: Mapping[str, Any]) -> int:
        with _cursor(alias) as cursor:
            cursor.execute(queries()[name], params)
            return int(cursor.rowcount)


def _cursor(alias: str) -> CursorWrapper:
    cursor: CursorWrapper = connections[alias].cursor()
    return cursor


class _ORMBackend:
    """The same rules as the named queries, with the ORM, for a single relay on a database
    without SKIP LOCKED (SQLite in development).

    Rows are ordered by ``id``: no trigger assigns ``position`` there, and SQLite serializes
    writers, so id order is commit order. Every write re-checks the row's state in its WHERE
    clause, so a row that changed since it was read is left alone rather than overwritten.
    Reads happen before the transaction that writes: a SQLite transaction that reads first
    and writes second can fail to upgrade its lock while the application is writing.
    """

    _READY = OutboxMessage.Status.READY

    def claim(
        self, alias: str, *, owner: str, limit: int, lease_seconds: float
    ) -> list[ClaimedMessage]:
        rows = OutboxMessage.objects.using(alias)
        now = timezone.now()
        unleased = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
        older_unpublished = rows.filter(
            ordering_key=OuterRef("ordering_key"), id__lt=OuterRef("id")
        ).exclude(status=OutboxMessage.Status.PUBLISHED)
        ids = list(
            rows.filter(unleased, status=self._READY, next_attempt_at__lte=now)
            .filter(Q(ordering_key="") | ~Exists(older_unpublished))
            .order_by("id")
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return []
        expires = now + timedelta(seconds=lease_seconds)
        with transaction.atomic(using=alias):
            rows.filter(unleased, id__in=ids, status=self._READY).update(
                lease_owner=owner, lease_expires_at=expires
            )
            leased = list(
                rows.filter(id__in=ids, lease_owner=owner, lease_expires_at=expires).order_by("id")
            )
        return [
            ClaimedMessage(
                id=row.id,
                message_id=row.message_id,
                event_type=row.event_type,
                routing_key=row.routing_key,
                exchange=row.exchange,
                aggregate_type=row.aggregate_type,
                aggregate_id=row.aggregate_id,
                payload_json=encode(row.payload),
                headers=dict(row.headers),
                created_at=row.created_at,
                position=row.position,
                attempts=row.attempts,
            )
            for row in leased
        ]

    def mark_published(self, alias: str, ids: list[int]) -> int:
        with transaction.atomic(using=alias):
            return self._publishable(alias, ids).update(**self._published())

    def mark_published_unroutable(self, alias: str, errors: dict[int, str]) -> int:
        # One UPDATE per distinct reason: a batch dropped together usually shares one.
        by_error: dict[str, list[int]] = {}
        for key, error in errors.items():
            by_error.setdefault(error, []).append(key)
        with transaction.atomic(using=alias):
            return sum(
                self._publishable(alias, ids).update(**self._published(), last_error=error)
                for error, ids in by_error.items()
            )

    def schedule_retry(
        self,
        alias: str,
        errors: dict[int, str],
        *,
        owner: str,
        max_attempts: int,
        backoff: float,
        backoff_max: float,
    ) -> RetryResult:
        rows = OutboxMessage.objects.using(alias)
        # Only the lease holder counts the attempt (see the schedule_retry query).
        held = dict(
            rows.filter(id__in=list(errors), status=self._READY, lease_owner=owner).values_list(
                "id", "attempts"
            )
        )
        now = timezone.now()
        retried: list[int] = []
        failed: list[int] = []
        with transaction.atomic(using=alias):
            for key, attempts in held.items():
                status = self._READY if attempts + 1 < max_attempts else OutboxMessage.Status.FAILED
                # Capped exponential backoff with "equal jitter", as in the SQL.
                delay = min(backoff_max, backoff * 2**attempts) * (0.5 + random.random() / 2)
                updated = rows.filter(
                    id=key, status=self._READY, lease_owner=owner, attempts=attempts
                ).update(
                    attempts=attempts + 1,
                    last_error=errors[key],
                    status=status,
                    next_attempt_at=now + timedelta(seconds=delay),
                    lease_owner="",
                    lease_expires_at=None,
                )
                if updated:
                    (retried if status == self._READY else failed).append(key)
        return RetryResult(sorted(retried), sorted(failed))

    def release(self, alias: str, ids: list[int], *, owner: str) -> int:
        with transaction.atomic(using=alias):
            return (
                OutboxMessage.objects.using(alias)
                .filter(id__in=ids, status=self._READY, lease_owner=owner)
                .update(lease_owner="", lease_expires_at=None)
            )

    def _publishable(self, alias: str, ids: list[int]) -> QuerySet[OutboxMessage]:
        # Whoever holds the lease now: the broker confirmed it, the fact is recorded once.
        return OutboxMessage.objects.using(alias).filter(id__in=ids, status=self._READY)

    @staticmethod
    def _published() -> dict[str, Any]:
        return {
            "status": OutboxMessage.Status.PUBLISHED,
            "published_at": timezone.now(),
            "lease_owner": "",
            "lease_expires_at": None,
        }


_SQL: _Backend = _PostgreSQLBackend()
_ORM: _Backend = _ORMBackend()
