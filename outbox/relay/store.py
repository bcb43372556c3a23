"""The relay's database side: the store protocol, what it returns, and ``store_for``.

A store claims, marks published, schedules a retry and releases outbox rows on one database,
each operation committed on its own so that no transaction or row lock outlives it (and none
is ever held while the broker is being talked to). ``store_for`` picks the implementation
once: ``outbox.relay.postgresql`` (named queries, SKIP LOCKED) on PostgreSQL,
``outbox.relay.orm`` elsewhere (SQLite for development: one relay only, polling only; see
docs/concepts.md, "Databases other than PostgreSQL").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from django.db import transaction

from outbox import conf
from outbox.common.database import is_postgresql, outbox_alias
from outbox.common.retry import RetryPolicy
from outbox.exceptions import RelayError

__all__ = [
    "ClaimedMessage",
    "OutboxStore",
    "RetryPolicy",
    "RetryResult",
    "max_per_key_setting",
    "refuse_inside_atomic",
    "store_for",
]


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


def max_per_key_setting(given: int | None = None) -> int | None:
    """The most rows of one ordering key a claim takes: ``given``, else
    ``OUTBOX["MAX_PER_KEY"]``; None means "as many as the batch holds"."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"max_per_key must be a positive integer, got {given!r}")
        return given
    value = conf.get("MAX_PER_KEY")
    if value is not None and not isinstance(value, int):  # pragma: no cover - typed in conf
        raise TypeError('OUTBOX["MAX_PER_KEY"] is not an integer setting')
    return value


class OutboxStore(Protocol):
    """The relay's operations on the outbox table of one database.

    Every operation commits on its own and raises ``RelayError`` inside
    ``transaction.atomic()``; database errors propagate as Django's ``DatabaseError``.
    """

    alias: str
    retry: RetryPolicy

    def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        """Lease up to ``limit`` publishable rows for ``owner``, in position order.

        The rows of one ordering key form its run: the key's oldest unpublished rows, from
        the oldest on, without a gap, while they are ready, due and unleased, and at most the
        store's per-key cap (``OUTBOX["MAX_PER_KEY"]``). A key whose oldest unpublished row is
        failed, leased or not due gives nothing, and holds back no other key. Two claims
        running at once never share a key: one takes the run, the other none of it.
        """
        ...

    def mark_published(self, ids: Sequence[int]) -> int:
        """Mark the rows the broker confirmed as published; return how many."""
        ...

    def mark_published_unroutable(self, errors: Mapping[int, str]) -> int:
        """Mark rows the broker dropped as unroutable published, keeping the reason in
        ``last_error`` (``ON_UNROUTABLE = "record"``); return how many."""
        ...

    def schedule_retry(self, errors: Mapping[int, str], *, owner: str) -> RetryResult:
        """Count one attempt for each refused row (id -> error text) ``owner`` still leases:
        retried after a backoff, or failed once it used ``retry.max_attempts``."""
        ...

    def release(self, ids: Sequence[int], *, owner: str) -> int:
        """Give back rows ``owner`` leased but could not get confirmed, attempts unchanged."""
        ...


def store_for(using: str | None = None, *, retry: RetryPolicy | None = None) -> OutboxStore:
    """The store for the outbox's database ``using`` (default: the router's choice)."""
    from outbox.relay.orm import ORMStore
    from outbox.relay.postgresql import PostgreSQLStore

    alias = outbox_alias(using)
    policy = retry or RetryPolicy.from_settings()
    if is_postgresql(alias):
        return PostgreSQLStore(alias, retry=policy)
    return ORMStore(alias, retry=policy)


def refuse_inside_atomic(alias: str) -> None:
    """Raise ``RelayError`` when the connection of ``alias`` is inside ``transaction.atomic``.

    There a claim would keep its row locks until the caller's transaction ends, possibly
    across the whole publish: exactly what the relay avoids.
    """
    if transaction.get_connection(alias).in_atomic_block:
        raise RelayError(
            "the outbox relay must not run inside transaction.atomic(); it commits each"
            " statement on its own"
        )
