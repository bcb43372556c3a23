"""The dead-letter admin through Django's test client (issue 15, item 3): list, filters,
search, detail, and requeue / discard with confirmation, permission and admin log."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from outbox.models import DeadLetter
from tests.broker import BoundQueue

MakeDeadLetter = Callable[..., DeadLetter]
CHANGELIST = reverse("admin:outbox_deadletter_changelist")
DEAD = DeadLetter.Status.DEAD
pytestmark = pytest.mark.django_db


def dead_letter_staff(*permissions: str) -> Client:
    user = User.objects.create_user("-".join(permissions) or "viewer", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="outbox", codename__in=["view_deadletter", *permissions]
        )
    )
    client = Client()
    client.force_login(user)
    return client


def shown(client: Client, **query: str) -> set[int]:
    response = client.get(CHANGELIST, query)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_list_filters_and_search(admin_client: Client, make_dead_letter: MakeDeadLetter) -> None:
    shipping = make_dead_letter()
    billing = make_dead_letter(
        consumer="billing", event_type="billing.invoice_issued", aggregate_id="7"
    )

    assert shown(admin_client, consumer="billing") == {billing.pk}
    assert shown(admin_client, event_type="orders.order_placed") == {shipping.pk}
    assert shown(admin_client, q=shipping.message_id) == {shipping.pk}
    assert shown(admin_client, q="7") == {billing.pk}
    html = admin_client.get(CHANGELIST).content.decode()
    assert f">{shipping.message_id[:8]}</span>" in html
    assert 'title="&#x27;sku&#x27;">&#x27;sku&#x27;</span>' in html


def test_detail_shows_the_whole_failure(
    admin_client: Client, make_dead_letter: MakeDeadLetter
) -> None:
    record = make_dead_letter(payload=None, body=b"\xff not json")

    html = admin_client.get(
        reverse("admin:outbox_deadletter_change", args=[record.pk])
    ).content.decode()

    assert "(not JSON, 10 bytes) b&#x27;\\xff not json&#x27;" in html
    assert "File &quot;shop/handlers.py&quot;" in html
    assert "&quot;content_type&quot;: &quot;application/json&quot;" in html
    assert 'name="_save"' not in html


def test_discard_confirms_then_marks_and_logs(make_dead_letter: MakeDeadLetter) -> None:
    record = make_dead_letter()
    client = dead_letter_staff("discard_deadletter")
    post = {"action": "discard", "_selected_action": [record.pk], "index": 0}

    page = client.post(CHANGELIST, post)
    assert page.templates[0].name == "admin/outbox/confirm_action.html"
    record.refresh_from_db()
    assert record.status == DEAD

    client.post(CHANGELIST, {**post, "post": "yes"})
    record.refresh_from_db()
    assert (record.status, record.resolved_by) == ("discarded", "discard_deadletter in the admin")
    assert LogEntry.objects.get().get_change_message() == "Discarded"


def test_each_action_needs_its_permission(make_dead_letter: MakeDeadLetter) -> None:
    record = make_dead_letter()
    viewer = dead_letter_staff()
    assert viewer.get(CHANGELIST).context["action_form"] is None
    viewer.post(
        CHANGELIST,
        {"action": "discard", "_selected_action": [record.pk], "index": 0, "post": "yes"},
    )
    record.refresh_from_db()
    assert record.status == DEAD
    both = dead_letter_staff("requeue_deadletter", "discard_deadletter")
    choices = {
        name for name, _ in both.get(CHANGELIST).context["action_form"].fields["action"].choices
    }
    assert choices == {"", "requeue", "discard"}


def test_requeue_publishes_the_record_to_its_queue(
    make_dead_letter: MakeDeadLetter, rabbit_queue: BoundQueue
) -> None:
    record = make_dead_letter(
        queue=rabbit_queue.name, headers={"x-outbox-attempts": 5, "x-tenant": "a"}
    )
    client = dead_letter_staff("requeue_deadletter")

    done = client.post(
        CHANGELIST,
        {"action": "requeue", "_selected_action": [record.pk], "index": 0, "post": "yes"},
        follow=True,
    )

    [message] = rabbit_queue.get(1)
    assert message.properties.message_id == record.message_id
    assert json.loads(message.body) == {"order_id": 42}
    assert message.properties.headers == {
        "x-tenant": "a",
        "x-outbox-routing-key": "orders.order_placed",
    }
    record.refresh_from_db()
    assert record.status == "requeued"
    assert "1 dead letter(s) requeued." in [str(m) for m in done.context["messages"]]
    assert LogEntry.objects.count() == 1


def test_a_refused_requeue_is_reported_and_changes_nothing(
    make_dead_letter: MakeDeadLetter,
) -> None:
    record = make_dead_letter(queue="test-no-such-queue-for-admin")
    client = dead_letter_staff("requeue_deadletter")

    done = client.post(
        CHANGELIST,
        {"action": "requeue", "_selected_action": [record.pk], "index": 0, "post": "yes"},
        follow=True,
    )

    notes = [str(m) for m in done.context["messages"]]
    assert any("does not exist; declare it with `outbox_consume shipping" in note for note in notes)
    record.refresh_from_db()
    assert record.status == DEAD
    assert not LogEntry.objects.exists()


def test_the_outbox_summary_counts_open_dead_letters(
    admin_client: Client, make_dead_letter: MakeDeadLetter
) -> None:
    make_dead_letter()
    make_dead_letter(status="requeued")

    response = admin_client.get(reverse("admin:outbox_outboxmessage_changelist"))

    assert response.context["outbox_dead_letters"] == 1
    assert f'href="{CHANGELIST}?status__exact=dead"' in response.content.decode()
