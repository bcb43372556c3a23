"""The outbox admin through Django's test client: summary, filters, search, detail, actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from outbox.admin import format_duration
from outbox.models import InboxMessage, OutboxMessage
from outbox.operations import stats
from tests.operations.conftest import MakeMessage, refreshed

READY = OutboxMessage.Status.READY
FAILED = OutboxMessage.Status.FAILED
PUBLISHED = OutboxMessage.Status.PUBLISHED
CHANGELIST = reverse("admin:outbox_outboxmessage_changelist")
pytestmark = pytest.mark.django_db


def staff_client(*permissions: str) -> Client:
    """A client logged in as staff holding the view permission plus ``permissions``."""
    username = "-".join(code.split("_outboxmessage")[0] for code in permissions) or "viewer"
    user = User.objects.create_user(username, password="x", is_staff=True)
    codenames = ["view_outboxmessage", *permissions]
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="outbox", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def action_names(client: Client) -> set[str]:
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    action_form = response.context["action_form"]
    if action_form is None:
        return set()
    return {name for name, _ in action_form.fields["action"].choices if name}


def test_summary_shows_counts_and_relay_activity(
    admin_client: Client, make_message: MakeMessage
) -> None:
    make_message(READY, age=timedelta(minutes=20))
    make_message(FAILED)
    make_message(PUBLISHED, published_ago=timedelta(seconds=5))

    response = admin_client.get(CHANGELIST)

    summary = response.context["outbox_summary"]
    assert (summary.ready, summary.failed, summary.published, summary.stuck) == (1, 1, 1, 2)
    html = response.content.decode()
    assert 'id="outbox-summary"' in html
    assert "published in the last minute (1)" in html


def test_stuck_filter_shows_failed_and_old_ready_rows(
    admin_client: Client, make_message: MakeMessage
) -> None:
    failed = make_message(FAILED)
    old = make_message(READY, age=timedelta(hours=1))
    make_message(READY)
    make_message(PUBLISHED, age=timedelta(days=1))

    response = admin_client.get(CHANGELIST, {"stuck": "yes"})

    shown = {row.pk for row in response.context["cl"].result_list}
    assert shown == {failed.pk, old.pk}


def test_event_type_filter_and_search(admin_client: Client, make_message: MakeMessage) -> None:
    paid = make_message(READY, event_type="orders.order_paid", aggregate_id="42")
    placed = make_message(READY)

    def shown(**query: str) -> set[int]:
        response = admin_client.get(CHANGELIST, query)
        return {row.pk for row in response.context["cl"].result_list}

    assert shown(event_type="orders.order_paid") == {paid.pk}
    assert shown(q=str(placed.message_id)) == {placed.pk}
    assert shown(q="42") == {paid.pk}
    assert shown(q="order:42") == {paid.pk}
    assert shown(q="no-such-thing") == set()


def test_detail_page_is_read_only_with_formatted_json(
    admin_client: Client, make_message: MakeMessage
) -> None:
    row = make_message(FAILED, payload={"order_id": 7, "note": "<b>"}, headers={"x-tenant": "a"})
    url = reverse("admin:outbox_outboxmessage_change", args=[row.pk])

    response = admin_client.get(url)

    html = response.content.decode()
    assert '<pre class="outbox-json">{\n  &quot;note&quot;: &quot;&lt;b&gt;&quot;' in html
    assert "&quot;x-tenant&quot;: &quot;a&quot;" in html
    assert 'name="_save"' not in html
    admin_client.post(url, {"status": "published"})
    assert refreshed(row).status == FAILED


def test_each_action_needs_its_own_permission() -> None:
    assert action_names(staff_client()) == set()
    assert action_names(staff_client("retry_outboxmessage")) == {"retry_now"}
    assert action_names(staff_client("mark_failed_outboxmessage")) == {"mark_failed"}
    assert action_names(staff_client("replay_outboxmessage")) == {
        "replay",
        "replay_with_new_ids",
    }


def test_an_action_without_its_permission_changes_nothing(make_message: MakeMessage) -> None:
    row = make_message(FAILED)
    client = staff_client("replay_outboxmessage")

    response = client.post(
        CHANGELIST, {"action": "retry_now", "_selected_action": [row.pk], "index": 0}
    )

    assert response.status_code in {200, 302}
    assert refreshed(row).status == FAILED
    assert not LogEntry.objects.exists()


def test_retry_now_changes_the_rows_and_writes_the_admin_log(
    make_message: MakeMessage,
) -> None:
    failed = make_message(FAILED, attempts=10)
    published = make_message(PUBLISHED)
    client = staff_client("retry_outboxmessage")

    response = client.post(
        CHANGELIST,
        {"action": "retry_now", "_selected_action": [failed.pk, published.pk], "index": 0},
        follow=True,
    )

    assert (refreshed(failed).status, refreshed(failed).attempts) == (READY, 0)
    assert refreshed(published).status == PUBLISHED
    notes = [str(message) for message in response.context["messages"]]
    assert "1 message(s) set to ready, due now." in notes
    assert any("1 message(s) left unchanged" in note for note in notes)
    entry = LogEntry.objects.get()
    assert (entry.object_id, entry.action_flag) == (str(failed.pk), CHANGE)
    assert "Retried now" in entry.get_change_message()


def test_mark_failed_and_replay_actions(make_message: MakeMessage) -> None:
    ready = make_message(READY)
    published = make_message(PUBLISHED)
    client = staff_client("mark_failed_outboxmessage", "replay_outboxmessage")

    for action, row in [
        ("mark_failed", ready),
        ("replay", published),
        ("replay_with_new_ids", ready),
    ]:
        client.post(
            CHANGELIST,
            {"action": action, "_selected_action": [row.pk], "index": 0, "post": "yes"},
        )

    assert refreshed(ready).status == FAILED
    assert refreshed(ready).last_error.startswith(
        "marked failed by mark_failed-replay in the admin"
    )
    assert refreshed(published).status == READY
    copy = OutboxMessage.objects.exclude(pk__in=[ready.pk, published.pk]).get()
    assert copy.headers["x-replay-of"] == str(ready.message_id)
    assert LogEntry.objects.count() == 3


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.6, "60 s"), (60, "1 min"), (7200, "2 h"), (3 * 86400 + 5, "3 d")],
)
def test_durations_are_shown_in_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_large_unfiltered_list_is_counted_by_estimate(
    admin_client: Client, make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        make_message(PUBLISHED)
    failed = make_message(FAILED)
    monkeypatch.setattr(stats, "EXACT_COUNT_LIMIT", 2)
    monkeypatch.setattr(stats, "estimated_table_rows", lambda using=None: 5000)

    unfiltered = admin_client.get(CHANGELIST)
    filtered = admin_client.get(CHANGELIST, {"status__exact": "failed"})

    assert unfiltered.context["cl"].result_count == 5000
    assert [row.pk for row in filtered.context["cl"].result_list] == [failed.pk]
    assert filtered.context["cl"].result_count == 1


@pytest.mark.django_db
def test_inbox_records_are_listed_read_only_and_found_by_message_id(admin_client: Client) -> None:
    InboxMessage.objects.create(consumer="shipping", message_id="m-1", event_type="a.b")
    InboxMessage.objects.create(consumer="billing", message_id="m-2", event_type="a.b")
    listing = admin_client.get("/admin/outbox/inboxmessage/", {"q": "m-1"})
    assert listing.status_code == 200
    content = listing.content.decode()
    assert "m-1" in content
    assert "m-2" not in content
    record = InboxMessage.objects.get(message_id="m-1")
    detail = admin_client.get(f"/admin/outbox/inboxmessage/{record.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert admin_client.get("/admin/outbox/inboxmessage/add/").status_code == 403
    deleted = admin_client.post(f"/admin/outbox/inboxmessage/{record.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert InboxMessage.objects.filter(pk=record.pk).exists()
