"""A real ``celery -A example_project worker --beat`` runs durable after-commit handlers: the
``outbox-jobs`` entry of ``outbox.schedule`` runs ``run_jobs``, which sends the bank's
withdrawal receipt (the example's console e-mail backend prints it in the worker's log)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import transaction

from domain_events import EventStore
from example_project.bank.accounts import Account
from outbox.models import InboxMessage, OutboxJob
from tests.celery.worker import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RECEIPT = "domain_events.handler:example_project.bank.handlers.email_withdrawal_receipt"


def test_the_worker_runs_the_receipt_job_after_the_commit(tmp_path: Path) -> None:
    store = EventStore()
    account = Account.open("worker")
    account.deposit(Decimal("10.00"))
    account.withdraw(Decimal("4.00"))
    with transaction.atomic():
        store.save(account)
    job = OutboxJob.objects.get()

    with celery_worker(tmp_path, exchange="unused-jobs") as worker:
        deadline = time.monotonic() + 60
        while OutboxJob.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = worker.log.read_text()
        assert not OutboxJob.objects.exists(), log[-4000:]

    assert InboxMessage.objects.get(consumer=RECEIPT).message_id == job.key
    assert "Task outbox.tasks.run_jobs[" in log
    assert "Subject: Withdrawal of 4.00" in log
    assert "To: worker@example.com" in log
