"""Purging under steady load keeps the table flat; the Celery task does the same."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.tasks import purge_outbox
from tests.operations.conftest import MakeMessage

PUBLISHED = OutboxMessage.Status.PUBLISHED


def _publish(rows: int, published_at: datetime) -> None:
    OutboxMessage.objects.bulk_create(
        OutboxMessage(
            message_id=uuid.uuid4(),
            event_type="orders.order_placed",
            routing_key="orders.order_placed",
            payload={"order_id": number, "padding": "x" * 200},
            status=PUBLISHED,
            created_at=published_at,
            published_at=published_at,
        )
        for number in range(rows)
    )


def _table_bytes() -> int:
    with connection.cursor() as cursor:
        cursor.execute("VACUUM outbox_message")
        cursor.execute("SELECT pg_relation_size('outbox_message')")
        size: int = cursor.fetchone()[0]
    return size


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_table_size_stays_flat_under_steady_load() -> None:
    """Each "day" adds the same traffic and the daily purge removes what left retention."""
    daily_rows, days = 2000, 6
    counts, sizes = [], []
    for day in range(days):
        # Simulated day ``day`` is ``days - day`` days ago: its traffic is published then,
        # and the purge beat runs that day keeps two days counted from then.
        days_ago = days - day
        _publish(daily_rows, published_at=timezone.now() - timedelta(days=days_ago))
        retention = timedelta(days=days_ago + 2) - timedelta(hours=1)
        with override_settings(OUTBOX={"RETENTION": int(retention.total_seconds())}):
            purge_outbox()
        counts.append(OutboxMessage.objects.count())
        sizes.append(_table_bytes())

    # Two days of traffic are kept once the retention window has filled...
    assert counts[1:] == [2 * daily_rows] * (days - 1)
    # ...and the space the purge frees is reused: the table peaks at the retention plus one
    # purge interval (three days here, from day 2 on) and stops growing.
    assert max(sizes[3:]) <= sizes[2] * 1.05, sizes
    assert sizes[2] > sizes[1], sizes


@pytest.mark.django_db
def test_purge_task_respects_retention_and_max_batches(make_message: MakeMessage) -> None:
    for _ in range(3):
        make_message(PUBLISHED, published_ago=timedelta(hours=3))
    keep = make_message(PUBLISHED, published_ago=timedelta(minutes=30))

    with override_settings(OUTBOX={"RETENTION": 3600, "PURGE_BATCH_SIZE": 1}):
        assert purge_outbox(max_batches=2) == 2
        assert purge_outbox() == 1

    assert list(OutboxMessage.objects.all()) == [keep]
