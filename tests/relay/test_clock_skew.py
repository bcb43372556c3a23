"""One clock for everything the claim compares: the database's. An application server whose
clock is off (simulated by patching ``django.utils.timezone.now``) neither delays delivery
nor makes ``outbox_status`` misreport the backlog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from outbox import Message, publish, publish_many
from outbox.models import OutboxMessage
from outbox.operations import actions, stats
from tests.relay.conftest import memory_relay

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxMessage.Status
SKEW = timedelta(seconds=120)


@contextmanager
def application_clock_off_by(offset: timedelta) -> Iterator[None]:
    """Django's clock runs ``offset`` off the real time, as on an application server whose
    clock has drifted: ``timezone.now()``, and every model field default bound to it at
    import (``default=timezone.now``)."""
    real_now = timezone.now

    def skewed() -> datetime:
        return real_now() + offset

    with ExitStack() as patches:
        patches.enter_context(mock.patch("django.utils.timezone.now", skewed))
        for model in apps.get_models():
            for field in model._meta.concrete_fields:
                if field.default is real_now:
                    patches.enter_context(mock.patch.object(field, "default", skewed))
        yield


def status_json(**options: Any) -> tuple[dict[str, Any], int]:
    out = StringIO()
    code = 0
    try:
        call_command("outbox_status", "--json", stdout=out, **options)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    data: dict[str, Any] = json.loads(out.getvalue())
    return data, code


def test_rows_written_by_a_clock_ahead_are_claimed_at_once() -> None:
    with application_clock_off_by(SKEW), transaction.atomic():
        publish("orders.placed", {"n": 1}, aggregate_type="order", aggregate_id=1)
        publish_many([Message("orders.placed", {"n": 2}, aggregate_type="order", aggregate_id=2)])
    with application_clock_off_by(SKEW):
        relay = memory_relay()
        assert relay.drain().published == 2
    assert OutboxMessage.objects.exclude(status=Status.PUBLISHED).count() == 0


def test_the_returned_row_carries_the_database_time() -> None:
    with application_clock_off_by(SKEW), transaction.atomic():
        row = publish("orders.placed", {"n": 1})
        (many,) = publish_many([Message("orders.placed", {"n": 2})])
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert row.created_at == stored.created_at == stored.next_attempt_at
    assert many.created_at == OutboxMessage.objects.get(pk=many.pk).created_at
    # Written by the database's clock, not the application's two minutes ahead.
    assert abs(stored.created_at - timezone.now()) < SKEW / 2


def test_retry_now_and_replay_make_rows_due_by_the_database_clock() -> None:
    with transaction.atomic():
        failed = publish("orders.placed", {"n": 1}, aggregate_type="order", aggregate_id=1)
        done = publish("orders.placed", {"n": 2}, aggregate_type="order", aggregate_id=2)
    OutboxMessage.objects.filter(pk=failed.pk).update(status=Status.FAILED, attempts=3)
    OutboxMessage.objects.filter(pk=done.pk).update(status=Status.PUBLISHED, published_at=Now())
    with application_clock_off_by(SKEW):
        assert actions.retry_now(OutboxMessage.objects.filter(pk=failed.pk)) == 1
        assert actions.replay(OutboxMessage.objects.filter(pk=done.pk)) == 1
        assert memory_relay().drain().published == 2


def test_outbox_status_measures_ages_on_the_database_clock(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "STUCK_AFTER": 60}
    with transaction.atomic():
        publish("orders.placed", {"n": 1})
    # A fresh row is fresh, however far ahead the application's clock is...
    with application_clock_off_by(SKEW):
        data, code = status_json()
        assert code == 0, data["problems"]
        assert data["oldest_ready_age_seconds"] < 30
        assert stats.summary().stuck == 0
    # ... and a row waiting for 100 s is stale, even when the application's clock is behind.
    OutboxMessage.objects.update(created_at=Now() - timedelta(seconds=100))
    with application_clock_off_by(-SKEW):
        data, code = status_json()
        assert code == 1, data
        assert data["oldest_ready_age_seconds"] >= 100
        assert data["backlog_stale"] is True
        assert stats.summary().stuck == 1
        assert OutboxMessage.objects.filter(stats.stuck_condition()).count() == 1
        assert stats.backlog().oldest_ready_age_seconds >= 100  # type: ignore[operator]
