"""The jobs admin's retry: at once for a page of ticked jobs, confirmed first from a job's own
page (or across pages, as for messages), and logged."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from outbox.models import OutboxJob

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:outbox_outboxjob_changelist")
FAILED = OutboxJob.Status.FAILED
READY = OutboxJob.Status.READY


def job(key: str, status: str, *, attempts: int = 10) -> OutboxJob:
    return OutboxJob.objects.create(
        kind="handler",
        name="shop.send_receipt",
        key=key,
        payload={"event": key},
        status=status,
        attempts=attempts,
        last_error="SMTP refused",
    )


def operator() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", password="x"))
    return client


def test_a_retry_from_the_job_page_asks_first_then_returns_to_it() -> None:
    failed = job("e-1", FAILED)
    client = operator()
    detail = reverse("admin:outbox_outboxjob_change", args=[failed.pk])
    assert 'value="retry_now"' in client.get(detail).content.decode()  # the page's button

    post = {"action": "retry_now", "_selected_action": [failed.pk], "_confirm": "1"}
    page = client.post(CHANGELIST, {**post, "_return": detail})
    assert page.templates[0].name == "admin/outbox/confirm_action.html"
    assert "Retry these jobs now?" in page.content.decode()
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (FAILED, 10)  # nothing changed yet

    done = client.post(CHANGELIST, {**post, "_return": detail, "post": "yes"})
    assert done.status_code == 302
    assert done["Location"] == detail
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (READY, 0)
    entry = LogEntry.objects.get(object_id=str(failed.pk))
    assert entry.get_change_message() == "Retried now: ready, runs reset to 0"


def test_a_page_of_ticked_jobs_retries_at_once() -> None:
    jobs = [job("e-2", FAILED), job("e-3", READY, attempts=3)]
    response = operator().post(
        CHANGELIST, {"action": "retry_now", "_selected_action": [j.pk for j in jobs]}, follow=True
    )
    assert "2 job(s) set to ready, due now." in response.content.decode()
    assert list(OutboxJob.objects.order_by("key").values_list("status", "attempts")) == [
        (READY, 0),
        (READY, 0),
    ]
