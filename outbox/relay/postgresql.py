"""The PostgreSQL store: each operation is one named query of ``outbox/sql/queries.sql``,
run in autocommit; claims use SKIP LOCKED so that any number of relays can run at once.

The claim walks the ordering keys from where this store's previous claim stopped (an
in-memory cursor, one per store, hence per relay), so every key with publishable rows gets
its turn however the backlog is shaped; see the ``claim`` query."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.backends.utils import CursorWrapper

from outbox import conf
from outbox.common.database import fetch_prepared
from outbox.common.sql import load_queries, rows_as
from outbox.models import OutboxMessage
from outbox.relay.store import (
    ClaimedMessage,
    RetryPolicy,
    RetryResult,
    max_per_key_setting,
    refuse_inside_atomic,
)

__all__ = ["PostgreSQLStore", "queries"]


def queries() -> dict[str, str]:
    """The named queries of ``outbox/sql/queries.sql``, by name."""
    return load_queries("outbox", "sql/queries.sql")


# The claim's columns: ClaimedMessage's fields in their order, then the ordering key the
# next claim starts after (None: no keyed row was claimed).
_CLAIM_COLUMNS = (*(field.name for field in dataclasses.fields(ClaimedMessage)), "next_cursor")
_HEADERS = _CLAIM_COLUMNS.index("headers")
_CREATED_AT = _CLAIM_COLUMNS.index("created_at")


def _check_claim_columns(columns: tuple[str, ...]) -> None:
    if columns != _CLAIM_COLUMNS:
        raise TypeError(f"the claim query returns {columns}, expected {_CLAIM_COLUMNS}")


@dataclasses.dataclass(frozen=True)
class _RetriedRow:
    id: int
    status: str


class PostgreSQLStore:
    """The named queries: one autocommit statement per operation, SKIP LOCKED claims.

    ``max_per_key`` caps the rows of one ordering key in a batch (default
    ``OUTBOX["MAX_PER_KEY"]``, itself defaulting to the batch size); 1 keeps at most one row
    per key in flight.
    """

    def __init__(self, alias: str, *, retry: RetryPolicy, max_per_key: int | None = None) -> None:
        self.alias = alias
        self.retry = retry
        self.max_per_key = max_per_key_setting(max_per_key)
        # The last ordering key claimed: the next claim's walk over the keys starts after it.
        self._cursor_key = ""

    def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        params = {
            "owner": owner,
            "limit": limit,
            "lease_seconds": lease_seconds,
            "after": self._cursor_key,
            "max_per_key": min(limit, self.max_per_key or limit),
        }
        if conf.get_bool("PREPARED_INSERT"):
            rows = self._claim_prepared(params)
        else:
            with self._cursor("claim", **params) as cursor:
                _check_claim_columns(tuple(column[0] for column in cursor.description or ()))
                rows = cursor.fetchall()
        if rows and rows[0][-1] is not None:
            self._cursor_key = rows[0][-1]
        # Built straight from the row tuples, in column order: this runs for every message
        # the relay sends, and building by name cost about as much as the rest of the claim's
        # Python work. The query returns headers as JSON text (Django leaves jsonb undecoded).
        # Most rows have no headers of their own: "{}" needs no JSON decoder. created_at
        # comes as epoch seconds (see the query).
        loads = json.loads
        from_epoch = datetime.fromtimestamp
        claimed = [
            ClaimedMessage(
                *[
                    *row[:_HEADERS],
                    {} if row[_HEADERS] == "{}" else loads(row[_HEADERS]),
                    *row[_HEADERS + 1 : _CREATED_AT],
                    from_epoch(row[_CREATED_AT], UTC),
                    *row[_CREATED_AT + 1 : -1],
                ]
            )
            for row in rows
        ]
        # Position order is publish order: it keeps each key's run in order on the channel.
        claimed.sort(key=lambda message: message.position)
        return claimed

    def _claim_prepared(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The claim as a server-side prepared statement of the relay's connection: parsing
        and planning it cost about as much as running it when a few rows are ready (the
        worker's usual wake-up). ``OUTBOX["PREPARED_INSERT"]`` turns every prepared
        statement off together (publish()'s INSERT, the claim, the mark, the release)."""
        refuse_inside_atomic(self.alias)
        claimed = fetch_prepared(self.alias, queries()["claim"], params)
        _check_claim_columns(claimed.columns)
        return claimed.rows

    def mark_published(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return self._count("mark_published", ids=bigint_array(ids))

    def mark_published_unroutable(self, errors: Mapping[int, str]) -> int:
        if not errors:
            return 0
        return self._count(
            "mark_published_unroutable", ids=list(errors), errors=list(errors.values())
        )

    def schedule_retry(self, errors: Mapping[int, str], *, owner: str) -> RetryResult:
        if not errors:
            return RetryResult([], [])
        with self._cursor(
            "schedule_retry",
            ids=list(errors),
            errors=list(errors.values()),
            owner=owner,
            max_attempts=self.retry.max_attempts,
            backoff=self.retry.backoff_seconds,
            backoff_max=self.retry.backoff_max_seconds,
        ) as cursor:
            rows = rows_as(cursor, _RetriedRow)
        failed = sorted(row.id for row in rows if row.status == OutboxMessage.Status.FAILED)
        retried = sorted(row.id for row in rows if row.status == OutboxMessage.Status.READY)
        return RetryResult(retried, failed)

    def release(self, ids: Sequence[int], *, owner: str) -> int:
        if not ids:
            return 0
        return self._count("release", ids=bigint_array(ids), owner=owner)

    def _cursor(self, name: str, **params: Any) -> CursorWrapper:
        refuse_inside_atomic(self.alias)
        cursor: CursorWrapper = connections[self.alias].cursor()
        cursor.execute(queries()[name], params)
        return cursor

    def _count(self, name: str, **params: Any) -> int:
        if conf.get_bool("PREPARED_INSERT"):
            # Prepared like the claim: the statement is not parsed and planned again for
            # every batch, and the ids go as one parameter (see bigint_array).
            refuse_inside_atomic(self.alias)
            return fetch_prepared(self.alias, queries()[name], params).rowcount
        with self._cursor(name, **params) as cursor:
            return int(cursor.rowcount)


def bigint_array(ids: Sequence[int]) -> str:
    """``ids`` as the text of a PostgreSQL array, which the queries cast to ``bigint[]``:
    joined here in C, where psycopg's list dumper spends about 0.6 us per element in Python
    (300 us for a batch of 500)."""
    return "{" + ",".join(map(str, ids)) + "}"
