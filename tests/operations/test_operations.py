"""Retry now, mark failed and replay: what changes, what is left alone."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.operations import actions
from tests.operations.conftest import MakeMessage, refreshed

READY = OutboxMessage.Status.READY
FAILED = OutboxMessage.Status.FAILED
PUBLISHED = OutboxMessage.Status.PUBLISHED


@pytest.mark.django_db
def test_retry_now_makes_failed_and_waiting_rows_due_with_attempts_reset(
    make_message: MakeMessage,
) -> None:
    failed = make_message(FAILED, attempts=10, last_error="unroutable")
    waiting = make_message(READY, attempts=3)
    OutboxMessage.objects.filter(pk=waiting.pk).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    published = make_message(PUBLISHED, attempts=1)
    before = timezone.now()

    changed = actions.retry_now(OutboxMessage.objects.all())

    assert changed == 2
    for row in (refreshed(failed), refreshed(waiting)):
        assert row.status == READY
        assert row.attempts == 0
        assert before <= row.next_attempt_at <= timezone.now()
    assert refreshed(failed).last_error == "unroutable"
    assert refreshed(published).status == PUBLISHED


@pytest.mark.django_db
def test_mark_failed_stops_only_ready_rows_and_keeps_the_previous_error(
    make_message: MakeMessage,
) -> None:
    ready = make_message(READY, last_error="connection refused")
    fresh = make_message(READY)
    published = make_message(PUBLISHED)

    changed = actions.mark_failed(OutboxMessage.objects.all(), actor="alice")

    assert changed == 2
    assert refreshed(ready).status == FAILED
    assert refreshed(ready).last_error == (
        "marked failed by alice; previous error: connection refused"
    )
    assert refreshed(fresh).last_error == "marked failed by alice"
    assert refreshed(published).status == PUBLISHED


@pytest.mark.django_db
def test_replay_keeps_the_message_id_by_default(make_message: MakeMessage) -> None:
    published = make_message(PUBLISHED, attempts=1)
    ready = make_message(READY)

    changed = actions.replay(OutboxMessage.objects.all())

    assert changed == 1
    row = refreshed(published)
    assert (row.status, row.message_id, row.published_at, row.attempts) == (
        READY,
        published.message_id,
        None,
        0,
    )
    assert OutboxMessage.objects.count() == 2
    assert refreshed(ready).status == READY


@pytest.mark.django_db
def test_replay_with_new_ids_inserts_copies_naming_the_original(
    make_message: MakeMessage,
) -> None:
    first = make_message(PUBLISHED, headers={"x-tenant": "a"})
    second = make_message(PUBLISHED)

    changed = actions.replay(OutboxMessage.objects.all(), new_ids=True, batch_size=1)

    assert changed == 2
    assert refreshed(first).status == PUBLISHED  # the originals stay as they were
    copies = list(OutboxMessage.objects.filter(status=READY).order_by("pk"))
    assert [copy.headers[actions.REPLAY_OF_HEADER] for copy in copies] == [
        str(first.message_id),
        str(second.message_id),
    ]
    assert copies[0].headers["x-tenant"] == "a"
    assert copies[0].message_id not in {first.message_id, second.message_id}
    assert (copies[0].payload, copies[0].ordering_key) == (first.payload, first.ordering_key)


@pytest.mark.django_db
def test_batches_report_every_changed_row_once(make_message: MakeMessage) -> None:
    rows = [make_message(FAILED) for _ in range(5)]
    batches: list[list[int]] = []

    changed = actions.retry_now(OutboxMessage.objects.all(), batch_size=2, on_batch=batches.append)

    assert changed == 5
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert sorted(pk for batch in batches for pk in batch) == sorted(row.pk for row in rows)


@pytest.mark.django_db
def test_a_bad_batch_size_is_refused(make_message: MakeMessage) -> None:
    make_message(FAILED)
    with pytest.raises(ValueError, match="batch_size"):
        actions.retry_now(OutboxMessage.objects.all(), batch_size=0)
    assert OutboxMessage.objects.get().status == FAILED


@pytest.mark.django_db(transaction=True)
def test_a_row_held_by_a_relay_is_left_alone(make_message: MakeMessage) -> None:
    held = make_message(READY)
    free = make_message(READY)
    locked = threading.Event()
    release = threading.Event()

    def relay_holding_the_row() -> None:
        settings = connection.settings_dict
        with (
            psycopg.connect(
                dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"]
            ) as other,
            other.transaction(),
        ):
            other.execute("SELECT 1 FROM outbox_message WHERE id = %s FOR UPDATE", [held.pk])
            locked.set()
            release.wait(10)

    relay = threading.Thread(target=relay_holding_the_row)
    relay.start()
    try:
        assert locked.wait(10)
        changed = actions.mark_failed(OutboxMessage.objects.all(), actor="bob")
    finally:
        release.set()
        relay.join()

    assert changed == 1
    assert refreshed(held).status == READY
    assert refreshed(free).status == FAILED


@pytest.mark.django_db
def test_each_operation_logs_one_line_with_its_count(
    make_message: MakeMessage, caplog: pytest.LogCaptureFixture
) -> None:
    make_message(FAILED)
    make_message(FAILED)
    caplog.set_level("INFO", logger="outbox.operations")

    actions.retry_now(OutboxMessage.objects.all())

    (record,) = caplog.records
    assert record.getMessage() == "outbox operation=retry_now count=2"
    assert record.outbox_count == 2  # type: ignore[attr-defined]
