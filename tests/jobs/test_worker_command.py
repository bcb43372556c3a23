"""``manage.py outbox_jobs`` as a real worker process: it runs a job committed while it waits,
and a SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection, transaction

from domain_events import EventStore
from example_project.bank.accounts import Account
from outbox.models import OutboxJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_runs_jobs_as_they_commit_and_stops_on_sigterm() -> None:
    environment = {
        **os.environ,
        "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONPATH": str(REPO_ROOT),
    }
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "outbox_jobs", "--settings=tests.settings"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        account = Account.open("runner")
        account.deposit(Decimal("9.00"))
        account.withdraw(Decimal("2.50"))
        with transaction.atomic():
            EventStore().save(account)
        assert OutboxJob.objects.count() == 1
        deadline = time.monotonic() + 60
        while OutboxJob.objects.exists() and time.monotonic() < deadline:
            assert worker.poll() is None, worker.communicate()[0]
            time.sleep(0.1)
        assert not OutboxJob.objects.exists()
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]

    assert worker.returncode == 0, output
    assert "Subject: Withdrawal of 2.50" in output  # the example's console e-mail backend
    assert output.rstrip().endswith("outbox jobs runner stopped")
