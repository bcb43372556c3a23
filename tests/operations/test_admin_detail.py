"""The outbox admin's list, detail page and confirmations through Django's test client
(issue 15, items 1 and 2); tests/operations/test_admin_browser.py looks at them in Chromium."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from outbox.admin import OutboxMessageAdmin, format_time
from outbox.models import OutboxMessage
from tests.operations.conftest import MakeMessage, refreshed
from tests.operations.test_admin import CHANGELIST, staff_client

READY = OutboxMessage.Status.READY
FAILED = OutboxMessage.Status.FAILED
PUBLISHED = OutboxMessage.Status.PUBLISHED
pytestmark = pytest.mark.django_db


def detail(row: OutboxMessage) -> str:
    return reverse("admin:outbox_outboxmessage_change", args=[row.pk])


def key_rows(make_message: MakeMessage) -> tuple[OutboxMessage, OutboxMessage, OutboxMessage]:
    """Three rows of key order:9: published, failed (the head), ready (blocked)."""
    published = make_message(PUBLISHED, aggregate_id="9", last_error="timeout on attempt 1")
    failed = make_message(FAILED, aggregate_id="9", last_error="NOT_FOUND - no exchange")
    blocked = make_message(READY, aggregate_id="9", age=timedelta(minutes=7))
    return published, failed, blocked


def test_times_show_seconds_and_relative_age() -> None:
    now = timezone.now()
    past = format_time(now - timedelta(minutes=12, seconds=3), now)
    future = format_time(now + timedelta(seconds=25), now)
    local = timezone.localtime(now - timedelta(minutes=12, seconds=3))
    assert local.strftime("%Y-%m-%d %H:%M:%S") in past
    assert "12 min ago" in past
    assert "in 25 s" in future


def test_list_shows_short_ids_one_line_errors_and_blocked_rows(
    admin_client: Client, make_message: MakeMessage
) -> None:
    published, failed, blocked = key_rows(make_message)
    make_message(FAILED, last_error="first line of the error\nsecond line")

    html = admin_client.get(CHANGELIST).content.decode()

    assert f'title="{blocked.message_id}">{str(blocked.message_id)[:8]}</span>' in html
    assert str(published.message_id) + "<" not in html  # never the whole id as text
    assert ">first line of the error</span>" in html
    assert 'title="first line of the error\nsecond line"' in html  # the tooltip has it all
    # A published row's old error is not shown as current trouble.
    assert "timeout on attempt 1" not in html
    blocked_link = f'href="{detail(failed)}" title="waits for an older unpublished row'
    assert html.count(blocked_link) == 1  # only the ready row behind the failed head
    assert 'href="/admin/outbox/outboxmessage/?ordering_key=order%3A9"' in html


def test_the_ordering_key_link_lists_the_keys_rows_in_position_order(
    admin_client: Client, make_message: MakeMessage
) -> None:
    published, failed, blocked = key_rows(make_message)
    make_message(READY, aggregate_id="10")

    response = admin_client.get(CHANGELIST, {"ordering_key": "order:9"})

    assert [row.pk for row in response.context["cl"].result_list] == [
        published.pk,
        failed.pk,
        blocked.pk,
    ]


def test_created_filter_takes_recent_windows(
    admin_client: Client, make_message: MakeMessage
) -> None:
    recent = make_message(READY, age=timedelta(minutes=5))
    hour_old = make_message(READY, age=timedelta(minutes=90))
    old = make_message(PUBLISHED, age=timedelta(days=8))

    def shown(window: str) -> set[int]:
        response = admin_client.get(CHANGELIST, {"created": window})
        return {row.pk for row in response.context["cl"].result_list}

    assert shown("15m") == {recent.pk}
    assert shown("24h") == {recent.pk, hour_old.pk}
    assert shown("older") == {old.pk}


def test_detail_of_a_blocked_row_links_to_the_row_holding_it_back(
    admin_client: Client, make_message: MakeMessage
) -> None:
    _, failed, blocked = key_rows(make_message)

    html = admin_client.get(detail(blocked)).content.decode()
    labels = html.lower()

    assert f'blocked by <a id="outbox-blocked-by" href="{detail(failed)}">' in html
    assert f"{str(failed.message_id)[:8]}</a> (failed, orders.order_placed" in html
    assert "— (no relay holds it)" in html
    assert "7 min ago" in html  # created, with its relative age
    assert ">next attempt:<" in labels


def test_detail_shows_the_lease_and_the_next_attempt(
    admin_client: Client, make_message: MakeMessage
) -> None:
    now = timezone.now()
    row = make_message(
        READY,
        attempts=2,
        next_attempt_at=now + timedelta(seconds=40),
        lease_owner="relay-host-1234",
        lease_expires_at=now + timedelta(seconds=25),
        last_error="connection refused",
    )

    html = admin_client.get(detail(row)).content.decode()

    assert '<span class="outbox-lease">relay-host-1234</span> until' in html
    assert "in 24 s" in html or "in 25 s" in html
    assert "in 39 s" in html or "in 40 s" in html
    assert '<pre class="outbox-text">connection refused</pre>' in html


def test_a_published_rows_error_is_history(admin_client: Client, make_message: MakeMessage) -> None:
    row = make_message(PUBLISHED, last_error="timeout on attempt 1")

    html = admin_client.get(detail(row)).content.decode()

    assert ">earlier error (history: published since):<" in html.lower()
    assert '<pre class="outbox-text outbox-history">timeout on attempt 1</pre>' in html
    assert ">last error:<" not in html.lower()


def test_detail_buttons_follow_permissions_and_status(make_message: MakeMessage) -> None:
    failed = make_message(FAILED)
    published = make_message(PUBLISHED)

    def buttons(client: Client, row: OutboxMessage) -> list[str]:
        response = client.get(detail(row))
        return [name for name, _ in response.context["outbox_buttons"]]

    operator = staff_client("retry_outboxmessage", "replay_outboxmessage")
    assert buttons(operator, failed) == ["retry_now", "replay", "replay_with_new_ids"]
    assert buttons(operator, published) == ["replay", "replay_with_new_ids"]
    viewer = staff_client()
    assert buttons(viewer, failed) == []
    assert 'id="outbox-buttons"' not in viewer.get(detail(failed)).content.decode()


@pytest.mark.parametrize("action", ["mark_failed", "replay", "replay_with_new_ids"])
def test_actions_that_send_or_stop_messages_confirm_first(
    make_message: MakeMessage, action: str
) -> None:
    rows = [make_message(READY), make_message(PUBLISHED), make_message(FAILED)]
    client = staff_client("mark_failed_outboxmessage", "replay_outboxmessage")
    post = {"action": action, "_selected_action": [row.pk for row in rows], "index": 0}

    page = client.post(CHANGELIST, post)

    assert page.status_code == 200
    assert page.templates[0].name == "admin/outbox/confirm_action.html"
    html = page.content.decode()
    changing = 1 if action == "mark_failed" else 2
    assert f"<strong>{changing} of 3</strong> selected will change" in html
    assert html.count("left as it is</td>") == 3 - changing
    for row in rows:
        assert f'name="_selected_action" value="{row.pk}"' in html
    assert [refreshed(row).status for row in rows] == [READY, PUBLISHED, FAILED]
    assert OutboxMessage.objects.count() == 3
    assert not LogEntry.objects.exists()

    done = client.post(CHANGELIST, {**post, "post": "yes"})

    assert done.status_code == 302
    assert LogEntry.objects.count() == changing


def test_retry_confirms_only_beyond_a_page_of_rows(
    make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OutboxMessageAdmin, "list_per_page", 2)
    rows = [make_message(FAILED) for _ in range(3)]
    client = staff_client("retry_outboxmessage")

    two = client.post(
        CHANGELIST,
        {"action": "retry_now", "_selected_action": [rows[0].pk, rows[1].pk], "index": 0},
    )
    assert two.status_code == 302
    assert refreshed(rows[0]).status == READY

    # "Select all 3" across pages: the page's rows ticked, and select_across.
    across = {
        "action": "retry_now",
        "select_across": "1",
        "index": 0,
        "_selected_action": [rows[2].pk, rows[1].pk],
    }
    page = client.post(CHANGELIST, across)
    assert page.templates[0].name == "admin/outbox/confirm_action.html"
    assert 'name="select_across" value="1"' in page.content.decode()
    assert refreshed(rows[2]).status == FAILED

    client.post(CHANGELIST, {**across, "post": "yes"})
    assert refreshed(rows[2]).status == READY


def test_a_detail_button_confirms_then_returns_to_the_detail(make_message: MakeMessage) -> None:
    row = make_message(FAILED, attempts=10)
    client = staff_client("retry_outboxmessage")
    post = {
        "action": "retry_now",
        "_selected_action": [row.pk],
        "index": 0,
        "_confirm": "1",
        "_return": detail(row),
    }

    page = client.post(CHANGELIST, post)
    assert page.templates[0].name == "admin/outbox/confirm_action.html"
    assert f'name="_return" value="{detail(row)}"' in page.content.decode()

    done = client.post(CHANGELIST, {**post, "post": "yes"})

    assert done.status_code == 302
    assert done["Location"] == detail(row)
    assert (refreshed(row).status, refreshed(row).attempts) == (READY, 0)
    entry = LogEntry.objects.get()
    assert "Retried now" in entry.get_change_message()

    elsewhere = client.post(CHANGELIST, {**post, "post": "yes", "_return": "https://evil.test/"})
    assert elsewhere["Location"] == CHANGELIST


def test_a_confirmed_post_without_the_permission_changes_nothing(make_message: MakeMessage) -> None:
    row = make_message(READY)
    client = staff_client("retry_outboxmessage")

    client.post(
        CHANGELIST,
        {"action": "mark_failed", "_selected_action": [row.pk], "index": 0, "post": "yes"},
    )

    assert refreshed(row).status == READY
    assert not LogEntry.objects.exists()
