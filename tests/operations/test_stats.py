"""The operational figures shared by the admin summary, outbox_status and the gauges."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings

from outbox.models import OutboxMessage
from outbox.operations import stats
from tests.operations.conftest import MakeMessage

READY = OutboxMessage.Status.READY
FAILED = OutboxMessage.Status.FAILED
PUBLISHED = OutboxMessage.Status.PUBLISHED
pytestmark = pytest.mark.django_db


def test_an_empty_outbox_is_quiet() -> None:
    summary = stats.summary()
    assert (summary.ready, summary.failed, summary.published, summary.stuck) == (0, 0, 0, 0)
    assert summary.oldest_ready_age_seconds is None
    assert summary.last_published_at is None
    assert not summary.relay_active


def test_counts_ages_and_throughput(make_message: MakeMessage) -> None:
    make_message(READY, age=timedelta(seconds=30))
    make_message(READY, age=timedelta(minutes=10))
    make_message(FAILED, age=timedelta(seconds=5))
    make_message(PUBLISHED, published_ago=timedelta(seconds=10))
    make_message(PUBLISHED, published_ago=timedelta(minutes=3))
    make_message(PUBLISHED, published_ago=timedelta(hours=2))

    summary = stats.summary()

    assert (summary.ready, summary.failed, summary.published) == (2, 1, 3)
    assert not summary.published_is_estimate
    # Failed, plus the ready row older than the default 300 s threshold.
    assert summary.stuck == 2
    assert summary.oldest_ready_age_seconds == pytest.approx(600, abs=5)
    assert summary.published_last_minute == 1
    assert summary.relay_active
    assert summary.published_per_second == pytest.approx(2 / 300)
    data = summary.as_json()
    assert data["relay_active"] is True
    assert isinstance(data["last_published_at"], str)


def test_stuck_threshold_is_a_setting(make_message: MakeMessage) -> None:
    old = make_message(READY, age=timedelta(seconds=90))
    make_message(READY, age=timedelta(seconds=10))

    with override_settings(OUTBOX={"STUCK_AFTER": 60}):
        stuck = OutboxMessage.objects.filter(stats.stuck_condition())
        assert list(stuck) == [old]
        assert stats.summary().stuck_after_seconds == 60


def test_ready_rows_backing_off_still_count_as_stuck(make_message: MakeMessage) -> None:
    """A row the relay keeps postponing (broker down) is old by creation, not by due time."""
    waiting = make_message(READY, age=timedelta(hours=1), attempts=7)
    OutboxMessage.objects.filter(pk=waiting.pk).update(
        next_attempt_at=waiting.created_at + timedelta(hours=2)
    )
    assert list(OutboxMessage.objects.filter(stats.stuck_condition())) == [waiting]
    backlog = stats.backlog()
    assert (backlog.ready, backlog.failed) == (1, 0)
    assert backlog.oldest_ready_age_seconds == pytest.approx(3600, abs=5)


def test_a_large_table_shows_the_planner_estimate(
    make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        make_message(PUBLISHED)
    make_message(READY)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_message")
    monkeypatch.setattr(stats, "EXACT_COUNT_LIMIT", 0)

    summary = stats.summary()

    assert summary.published_is_estimate
    assert summary.published == 4  # ANALYZE of a tiny table counts every row
    assert summary.ready == 1


def test_backlog_is_stale_only_past_the_threshold(make_message: MakeMessage) -> None:
    make_message(FAILED)
    make_message(READY, age=timedelta(seconds=30))
    assert not stats.summary().backlog_stale

    make_message(READY, age=timedelta(minutes=6))
    summary = stats.summary()
    assert summary.backlog_stale
    assert summary.as_json()["backlog_stale"] is True
