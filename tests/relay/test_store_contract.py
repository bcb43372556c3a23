"""The store contract: one test class, run against every ``OutboxStore`` implementation.

The PostgreSQL store (named queries) and the ORM store (the code SQLite runs) must give the same
answers to the same claim, lease, retry and unroutable situations. Both run here on the test
PostgreSQL database; the ORM store on SQLite itself runs end to end in test_sqlite_relay.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.relay.orm import ORMStore
from outbox.relay.postgresql import PostgreSQLStore
from outbox.relay.store import OutboxStore, RetryPolicy, RetryResult

_POLICY = RetryPolicy(max_attempts=2, backoff_seconds=10.0, backoff_max_seconds=60.0)


def _row(name: str, key: str = "", **fields: Any) -> OutboxMessage:
    aggregate_type, _, aggregate_id = key.partition(":")
    return OutboxMessage.objects.create(
        event_type=name,
        routing_key=name,
        exchange="x",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        ordering_key=key,
        payload={"name": name},
        headers={"h": 1},
        **fields,
    )


def _claim(backend: OutboxStore, owner: str = "relay-1", limit: int = 10) -> list[str]:
    claimed = backend.claim(owner=owner, limit=limit, lease_seconds=30)
    return [message.event_type for message in claimed]


def _retry(backend: OutboxStore, errors: dict[int, str], owner: str = "relay-1") -> RetryResult:
    return backend.schedule_retry(errors, owner=owner)


@pytest.mark.django_db(transaction=True)
class StoreContract:
    """The rules every store keeps; a subclass names the store in its ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> OutboxStore:
        raise NotImplementedError

    def test_claim_takes_only_the_head_of_each_key(self, backend: OutboxStore) -> None:
        a1 = _row("a1", "order:A")
        _row("a2", "order:A")
        _row("b1", "order:B")
        _row("free")
        _row("later", next_attempt_at=timezone.now() + timedelta(hours=1))
        _row("done", "order:C", status=OutboxMessage.Status.PUBLISHED)
        _row("c2", "order:C")

        assert _claim(backend) == ["a1", "b1", "free", "c2"]
        claimed = backend.claim(owner="relay-2", limit=10, lease_seconds=30)
        assert claimed == []  # all leased, a2 still behind a1

        assert backend.mark_published([a1.id]) == 1
        assert _claim(backend, "relay-2") == ["a2"]

    def test_claim_returns_the_row_and_sets_the_lease(self, backend: OutboxStore) -> None:
        row = _row("a1", "order:A")
        before = timezone.now()

        [message] = backend.claim(owner="relay-1", limit=10, lease_seconds=30)

        assert (message.id, message.message_id, message.exchange) == (row.id, row.message_id, "x")
        assert (message.aggregate_type, message.aggregate_id) == ("order", "A")
        assert json.loads(message.payload_json) == {"name": "a1"}
        assert message.headers == {"h": 1}
        assert message.attempts == 0
        row.refresh_from_db()
        assert row.lease_owner == "relay-1"
        assert row.lease_expires_at is not None
        assert (
            before + timedelta(seconds=25) < row.lease_expires_at < before + timedelta(seconds=35)
        )

    def test_lease_is_respected_until_it_expires_or_is_released(self, backend: OutboxStore) -> None:
        first = _row("a1", "order:A")
        second = _row("b1", "order:B")
        assert _claim(backend, "relay-1") == ["a1", "b1"]

        assert _claim(backend, "relay-2") == []
        assert backend.release([first.id, second.id], owner="relay-2") == 0
        OutboxMessage.objects.filter(id=first.id).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert _claim(backend, "relay-2") == ["a1"]  # expired: free for anyone
        assert backend.release([second.id], owner="relay-1") == 1
        assert _claim(backend, "relay-3") == ["b1"]
        assert OutboxMessage.objects.get(id=second.id).attempts == 0

    def test_retry_backs_off_then_fails_at_max_attempts(self, backend: OutboxStore) -> None:
        row = _row("a1", "order:A")
        _row("a2", "order:A")
        assert _claim(backend) == ["a1"]

        # Only the lease holder counts an attempt.
        assert _retry(backend, {row.id: "nack"}, owner="other") == RetryResult([], [])
        before = timezone.now()
        assert _retry(backend, {row.id: "nack"}) == RetryResult([row.id], [])
        row.refresh_from_db()
        assert (row.status, row.attempts, row.last_error, row.lease_owner) == (
            "ready",
            1,
            "nack",
            "",
        )
        # 10 s * 2**0 with equal jitter: between 5 and 10 s from now.
        assert (
            before + timedelta(seconds=4.9)
            < row.next_attempt_at
            < timezone.now() + timedelta(seconds=10.1)
        )
        assert _claim(backend) == []  # not due yet, and a2 waits behind it

        OutboxMessage.objects.filter(id=row.id).update(next_attempt_at=timezone.now())
        assert _claim(backend) == ["a1"]
        assert _retry(backend, {row.id: "nack again"}) == RetryResult([], [row.id])
        row.refresh_from_db()
        assert (row.status, row.attempts, row.last_error) == ("failed", 2, "nack again")
        assert _claim(backend) == []  # a failed row still holds back its key

    def test_unroutable_is_recorded_as_published(self, backend: OutboxStore) -> None:
        first = _row("a1", "order:A")
        second = _row("b1", "order:B")
        _claim(backend)

        recorded = backend.mark_published_unroutable(
            {first.id: "NO_ROUTE a", second.id: "NO_ROUTE b"}
        )

        assert recorded == 2
        assert sorted(
            OutboxMessage.objects.values_list("event_type", "status", "last_error", "lease_owner")
        ) == [("a1", "published", "NO_ROUTE a", ""), ("b1", "published", "NO_ROUTE b", "")]
        assert backend.mark_published([first.id]) == 0  # recorded once


class TestPostgreSQLStore(StoreContract):
    @pytest.fixture
    def backend(self) -> OutboxStore:
        return PostgreSQLStore(connection.alias, retry=_POLICY)


class TestORMStore(StoreContract):
    @pytest.fixture
    def backend(self) -> OutboxStore:
        return ORMStore(connection.alias, retry=_POLICY)
