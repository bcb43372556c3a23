"""The purges VACUUM what they deleted, so new rows reuse the space even with autovacuum off
(as on the reference machine's PostgreSQL), and the migration tunes autovacuum per table."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from outbox.consumer.inbox import purge_inbox
from outbox.models import InboxMessage, OutboxMessage
from outbox.operations.actions import purge_published
from outbox.operations.vacuum import vacuum_after_purge
from tests.operations.test_purge import _publish


def publish_old(rows: int) -> None:
    """``rows`` published rows, a month past their publication."""
    _publish(rows, published_at=timezone.now() - timedelta(days=30))


def process_old(rows: int) -> None:
    long_ago = timezone.now() - timedelta(days=30)
    InboxMessage.objects.bulk_create(
        InboxMessage(consumer="vacuum-test", message_id=str(uuid.uuid4()), processed_at=long_ago)
        for _ in range(rows)
    )


def size(table: str) -> int:
    """Heap pages in use, without vacuuming first (the point is what the purge did)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s)", [table])
        value: int = cursor.fetchone()[0]
    return value


def vacuum_count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = %s", [table])
        value: int = cursor.fetchone()[0]
    return value


@pytest.mark.django_db(transaction=True)
def test_purged_space_is_reused_by_the_next_rows(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "RETENTION": 3600}
    sizes = []
    for _ in range(4):
        publish_old(3000)
        sizes.append(size("outbox_message"))
        assert purge_published() == 3000
    # Each round writes as many rows as the purge freed: with the space reused the heap
    # stays at one round's size; without VACUUM (autovacuum off) it grows by a round each time.
    assert sizes[-1] <= sizes[0] * 1.1, sizes


@pytest.mark.django_db(transaction=True)
def test_the_purge_vacuums_unless_turned_off(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "RETENTION": 3600}
    publish_old(10)
    before = vacuum_count("outbox_message")
    purge_published()
    assert vacuum_count("outbox_message") == before + 1

    settings.OUTBOX = {**settings.OUTBOX, "PURGE_VACUUM": False}
    publish_old(10)
    purge_published()
    assert vacuum_count("outbox_message") == before + 1


@pytest.mark.django_db(transaction=True)
def test_the_inbox_purge_vacuums_too() -> None:
    process_old(2000)
    first = size("outbox_inbox")
    assert purge_inbox(older_than=timedelta(days=1)) == 2000
    process_old(2000)
    assert size("outbox_inbox") <= first * 1.1


@pytest.mark.django_db(transaction=True)
def test_nothing_deleted_nothing_vacuumed() -> None:
    before = vacuum_count("outbox_message")
    assert purge_published() == 0
    assert vacuum_count("outbox_message") == before


@pytest.mark.django_db
def test_inside_a_transaction_the_vacuum_is_skipped_without_error() -> None:
    """VACUUM cannot run in a transaction block: the purge still deletes and commits."""
    with transaction.atomic():
        publish_old(5)
        assert purge_published(older_than=timedelta(days=1)) == 5
        assert not vacuum_after_purge(OutboxMessage, "default", 5)


@pytest.mark.django_db
@pytest.mark.parametrize("table", ["outbox_message", "outbox_inbox"])
def test_the_migration_tunes_autovacuum(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [table])
        options = set(cursor.fetchone()[0])
    assert {
        "autovacuum_vacuum_scale_factor=0.01",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.02",
    } <= options
