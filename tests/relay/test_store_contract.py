"""The store contract: one test class, run against every ``OutboxStore`` implementation.

The PostgreSQL store (named queries) and the ORM store (the code SQLite runs) must give the same
answers to the same claim, lease, retry and unroutable situations. Both run here on the test
PostgreSQL database; the ORM store on SQLite itself runs end to end in test_sqlite_relay.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.relay.orm import ORMStore
from outbox.relay.postgresql import PostgreSQLStore
from outbox.relay.store import ClaimedMessage, OutboxStore, RetryPolicy, RetryResult

_POLICY = RetryPolicy(max_attempts=2, backoff_seconds=10.0, backoff_max_seconds=60.0)
_HOUR = timedelta(hours=1)


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


def _claimed_by_key(claimed: list[ClaimedMessage]) -> dict[str, list[int]]:
    """Ids of the keyed rows of ``claimed`` by ordering key (unkeyed rows left out)."""
    by_key: dict[str, list[int]] = {}
    for message in claimed:
        if message.aggregate_type:
            key = f"{message.aggregate_type}:{message.aggregate_id}"
            by_key.setdefault(key, []).append(message.id)
    return by_key


@pytest.mark.django_db(transaction=True)
class StoreContract:
    """The rules every store keeps; a subclass names the store class in ``store_type``."""

    store_type: Callable[..., OutboxStore]

    @pytest.fixture
    def backend(self) -> OutboxStore:
        return self.store_type(connection.alias, retry=_POLICY)

    def test_a_claimed_message_carries_its_row_exactly(self, backend: OutboxStore) -> None:
        # The PostgreSQL claim reads created_at as epoch seconds and skips the JSON decoder
        # for empty headers: neither may change what the publisher is given.
        with_headers = _row("h", "order:H")
        without = _row("e", "order:E")
        OutboxMessage.objects.filter(pk=without.pk).update(
            headers={}, created_at=timezone.now().replace(microsecond=999_999)
        )
        claimed = {
            message.id: message for message in backend.claim(owner="r", limit=10, lease_seconds=30)
        }
        for row in (with_headers, without):
            stored = OutboxMessage.objects.get(pk=row.pk)
            message = claimed[row.pk]
            assert message.created_at == stored.created_at
            assert message.created_at.utcoffset() == timedelta(0)
            assert message.headers == stored.headers
            assert message.message_id == stored.message_id
        assert claimed[without.pk].created_at.microsecond == 999_999
        assert claimed[with_headers.pk].headers == {"h": 1}

    def test_claim_takes_each_keys_run_in_position_order(self, backend: OutboxStore) -> None:
        _row("a1", "order:A")
        _row("b1", "order:B")
        _row("a2", "order:A")
        _row("free")
        _row("later", next_attempt_at=timezone.now() + timedelta(hours=1))
        _row("done", "order:C", status=OutboxMessage.Status.PUBLISHED)
        _row("c2", "order:C")

        assert _claim(backend) == ["a1", "b1", "a2", "free", "c2"]
        assert _claim(backend, "relay-2") == []  # all leased, "later" not due

    def test_with_one_row_per_key_only_heads_are_claimed(self) -> None:
        backend = self.store_type(connection.alias, retry=_POLICY, max_per_key=1)
        a1 = _row("a1", "order:A")
        _row("a2", "order:A")
        _row("b1", "order:B")
        _row("free")
        _row("done", "order:C", status=OutboxMessage.Status.PUBLISHED)
        _row("c2", "order:C")

        assert _claim(backend) == ["a1", "b1", "free", "c2"]
        assert _claim(backend, "relay-2") == []  # a2 still behind a1

        assert backend.mark_published([a1.id]) == 1
        assert _claim(backend, "relay-2") == ["a2"]

    def test_a_keys_rows_in_a_batch_are_a_prefix_of_its_backlog(self, backend: OutboxStore) -> None:
        rows = [_row(f"{key}{n}", f"order:{key}") for n in range(6) for key in "ABC"]
        # Per key: at most four rows, and only up to the first that is not publishable.
        capped = self.store_type(connection.alias, retry=_POLICY, max_per_key=4)
        OutboxMessage.objects.filter(event_type="B2").update(
            next_attempt_at=timezone.now() + timedelta(hours=1)
        )
        OutboxMessage.objects.filter(event_type="C1").update(
            lease_owner="elsewhere", lease_expires_at=timezone.now() + timedelta(hours=1)
        )

        claimed = capped.claim(owner="relay-1", limit=100, lease_seconds=30)

        ids = {row.event_type: row.id for row in rows}
        assert _claimed_by_key(claimed) == {
            "order:A": [ids["A0"], ids["A1"], ids["A2"], ids["A3"]],
            "order:B": [ids["B0"], ids["B1"]],
            "order:C": [ids["C0"]],
        }
        positions = [message.position for message in claimed]
        assert positions == sorted(positions)

    def test_a_batch_holds_at_most_the_limit_and_only_prefixes(self, backend: OutboxStore) -> None:
        rows = [_row(f"{key}{n}", f"order:{key}") for n in range(5) for key in "ABC"]

        claimed = backend.claim(owner="relay-1", limit=4, lease_seconds=30)

        assert len(claimed) == 4
        for key, ids in _claimed_by_key(claimed).items():
            of_key = [row.id for row in rows if row.ordering_key == key]
            assert ids == of_key[: len(ids)], key

    def test_a_blocked_key_holds_back_only_itself(self, backend: OutboxStore) -> None:
        _row("failed", "order:F", status=OutboxMessage.Status.FAILED)
        _row("leased", "order:L", lease_owner="x", lease_expires_at=timezone.now() + _HOUR)
        _row("waiting", "order:W", next_attempt_at=timezone.now() + _HOUR)
        for n in range(3):
            for key in "FLW":
                _row(f"behind-{key}{n}", f"order:{key}")
        _row("o1", "order:O")
        _row("free")
        _row("o2", "order:O")

        assert _claim(backend) == ["o1", "free", "o2"]

    def test_concurrent_claims_never_split_a_run_nor_overlap(self) -> None:
        for n in range(8):
            for aggregate in range(25):
                _row(f"{aggregate}-{n}", f"order:{aggregate}")
        for n in range(20):
            _row(f"free-{n}")
        claims: dict[str, list[ClaimedMessage]] = {}
        start = threading.Barrier(4)

        def claim_until_empty(owner: str) -> None:
            store = self.store_type(connection.alias, retry=_POLICY, max_per_key=5)
            taken = claims.setdefault(owner, [])
            try:
                start.wait()
                # Nothing is ever marked: each key can be claimed once, by one relay.
                while batch := store.claim(owner=owner, limit=7, lease_seconds=30):
                    taken.extend(batch)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=claim_until_empty, args=(f"relay-{n}",)) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        # Rows whose head a busy relay skipped are left for a last claim.
        claims["relay-last"] = self.store_type(connection.alias, retry=_POLICY).claim(
            owner="relay-last", limit=1000, lease_seconds=30
        )

        all_ids = [message.id for batch in claims.values() for message in batch]
        assert len(all_ids) == len(set(all_ids)), "a row was claimed twice"
        owners_by_key: dict[str, set[str]] = {}
        for owner, batch in claims.items():
            for key, ids in _claimed_by_key(batch).items():
                owners_by_key.setdefault(key, set()).add(owner)
                backlog = OutboxMessage.objects.filter(ordering_key=key).order_by("position")
                assert ids == list(backlog.values_list("id", flat=True)[: len(ids)]), key
        assert len(owners_by_key) == 25
        assert all(len(owners) == 1 for owners in owners_by_key.values()), owners_by_key
        assert sum(1 for m in (m for b in claims.values() for m in b) if not m.aggregate_type) == 20
        for owner, batch in claims.items():
            leased = OutboxMessage.objects.filter(lease_owner=owner)
            assert sorted(m.id for m in batch) == sorted(leased.values_list("id", flat=True))

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

    def test_retry_backs_off_then_fails_at_max_attempts(self) -> None:
        backend = self.store_type(connection.alias, retry=_POLICY, max_per_key=1)
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
    store_type = PostgreSQLStore


class TestORMStore(StoreContract):
    store_type = ORMStore
