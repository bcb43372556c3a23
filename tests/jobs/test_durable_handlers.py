"""Durable after-commit handlers against the real PostgreSQL: written with the events, run
after the commit by the job runner, at most once, retried, failed and visible."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from domain_events import dispatch, handler
from domain_events.durable import JOB_KIND
from domain_events.eventsourcing.exceptions import SerializationError
from domain_events.registry import HandlerRegistry
from outbox import kick
from outbox.jobs import RunResult, run_due_jobs
from outbox.jobs.store import LEASE_EXPIRED_ERROR, RetryPolicy
from outbox.models import InboxMessage, OutboxJob, OutboxMessage
from outbox.tasks import run_jobs
from tests.jobs import handlers as job_handlers
from tests.testapp.models import Counter, CounterBumped, LogLine

pytestmark = pytest.mark.django_db(transaction=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_BUMP = "tests.jobs.handlers.log_bump"
FLAKY = "tests.jobs.handlers.flaky"
NO_WAIT = {"JOB_RETRY_BACKOFF_SECONDS": 0, "JOB_MAX_ATTEMPTS": 3}


def bump(name: str, by: int = 1) -> Counter:
    with transaction.atomic():
        counter = Counter(name=name)
        counter.bump(by=by)
        counter.save()
    return counter


@pytest.fixture
def durable(handlers: HandlerRegistry) -> HandlerRegistry:
    job_handlers.register()
    return handlers


@pytest.fixture
def fast_retries(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, **NO_WAIT}


def test_the_job_is_written_with_the_event_and_runs_after_the_commit(
    durable: HandlerRegistry,
) -> None:
    counter = bump("a", by=2)

    job = OutboxJob.objects.get()
    assert (job.kind, job.name, job.status, job.attempts) == (JOB_KIND, LOG_BUMP, "ready", 0)
    event_id = job.payload["event_id"]
    assert job.key == event_id
    assert job.payload["event_type"] == "CounterBumped"
    assert job.payload["data"] == {"counter_name": "a", "by": 2}
    assert not LogLine.objects.exists()
    assert not OutboxMessage.objects.exists()  # a local job, never a message for RabbitMQ

    result = run_due_jobs()

    assert (result.done, result.skipped, result.retried, result.failed) == (1, 0, 0, 0)
    assert list(LogLine.objects.values_list("text", flat=True)) == ["bumped a by 2"]
    assert not OutboxJob.objects.exists()
    record = InboxMessage.objects.get()
    assert (record.consumer, record.message_id) == (f"{JOB_KIND}:{LOG_BUMP}", event_id)
    assert Counter.objects.get(pk=counter.pk).value == 2


def test_a_rolled_back_transaction_leaves_no_job(durable: HandlerRegistry) -> None:
    written = []

    def save_then_fail() -> None:
        with transaction.atomic():
            counter = Counter(name="b")
            counter.bump()
            counter.save()
            written.append(OutboxJob.objects.count())
            raise RuntimeError("the business transaction fails")

    with pytest.raises(RuntimeError):
        save_then_fail()

    assert written == [1]
    assert not OutboxJob.objects.exists()
    assert run_due_jobs().done == 0


def test_a_process_killed_right_after_the_commit_loses_no_handler_call(
    durable: HandlerRegistry,
) -> None:
    environment = {
        **os.environ,
        "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.run(
        [sys.executable, "-m", "tests.jobs.writer", "killed"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert process.returncode == -signal.SIGKILL, process.stderr
    assert process.stdout.strip() == "committed"
    assert Counter.objects.get(name="killed").value == 3
    assert not LogLine.objects.exists()  # nothing ran the handler before the kill
    assert OutboxJob.objects.get().name == LOG_BUMP

    assert run_due_jobs().done == 1
    assert list(LogLine.objects.values_list("text", flat=True)) == ["bumped killed by 3"]


def test_a_failing_handler_is_retried_then_failed_and_rolls_back_each_time(
    handlers: HandlerRegistry, fast_retries: None
) -> None:
    handler(CounterBumped, on_commit="durable")(job_handlers.flaky)
    job_handlers.failures_left = 10
    bump("c")

    result = run_due_jobs()

    assert (result.done, result.retried, result.failed) == (0, 2, 1)
    job = OutboxJob.objects.get()
    assert (job.status, job.attempts) == ("failed", 3)
    assert job.last_error == "ConnectionError: payment API unreachable for c"
    # Each failed run's write and at-most-once record rolled back with it.
    assert not LogLine.objects.exists()
    assert not InboxMessage.objects.exists()
    assert run_due_jobs().failed == 0  # a failed job is not run again by itself


def test_a_failed_job_shows_in_outbox_status_and_the_admin_which_retries_it(
    handlers: HandlerRegistry, fast_retries: None
) -> None:
    handler(CounterBumped, on_commit="durable")(job_handlers.flaky)
    job_handlers.failures_left = 3
    bump("d")
    run_due_jobs()
    job = OutboxJob.objects.get(status="failed")

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_status:
        call_command("outbox_status", "--json", stdout=out)
    assert exit_status.value.code == 2
    status = json.loads(out.getvalue())
    assert (status["jobs_ready"], status["jobs_failed"]) == (0, 1)
    assert "1 failed job (limit 0)" in status["problems"]
    text = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("outbox_status", stdout=text)
    assert "jobs failed" in text.getvalue()

    admin = User.objects.create_superuser("ops", password="x")
    client = Client()
    client.force_login(admin)
    changelist = reverse("admin:outbox_outboxjob_changelist")
    page = client.get(changelist, {"status": "failed"}).content.decode()
    assert FLAKY in page
    assert LOG_BUMP not in page
    assert "payment API unreachable for d" in page
    assert client.get(reverse("admin:outbox_outboxjob_change", args=[job.pk])).status_code == 200

    response = client.post(
        changelist, {"action": "retry_now", "_selected_action": [job.pk]}, follow=True
    )
    assert "1 job(s) set to ready, due now." in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("ready", 0)

    job_handlers.failures_left = 0
    assert run_due_jobs().done == 1
    assert list(LogLine.objects.values_list("text", flat=True)) == ["flaky d"]
    assert InboxMessage.objects.filter(consumer=f"{JOB_KIND}:{FLAKY}").count() == 1


def test_a_duplicate_run_is_skipped(durable: HandlerRegistry) -> None:
    bump("e")
    event = CounterBumped(counter_name="e", by=1, event_id=uuid.UUID(OutboxJob.objects.get().key))
    assert run_due_jobs().done == 1

    # The same event dispatched again (a re-sent command, a replay) writes a new job...
    with transaction.atomic():
        dispatch([event])
    assert OutboxJob.objects.count() == 1
    # ...which finds the record of the first run and is deleted without running again.
    result = run_due_jobs()

    assert (result.done, result.skipped) == (0, 1)
    assert LogLine.objects.count() == 1
    assert not OutboxJob.objects.exists()


def test_one_job_per_event_and_handler_while_it_waits(durable: HandlerRegistry) -> None:
    event = CounterBumped(counter_name="f", by=1)
    with transaction.atomic():
        dispatch([event])
        dispatch([event])
    with transaction.atomic():
        dispatch([event])
    assert OutboxJob.objects.count() == 1


def test_a_job_whose_runner_died_during_its_last_run_ends_failed(
    durable: HandlerRegistry, settings: Any
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "JOB_MAX_ATTEMPTS": 2}
    bump("g")
    OutboxJob.objects.update(
        attempts=2, lease_owner="dead", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert run_due_jobs().done == 0

    job = OutboxJob.objects.get()
    assert (job.status, job.last_error) == ("failed", LEASE_EXPIRED_ERROR)
    OutboxJob.objects.update(status="ready", last_error="TimeoutError: smtp")
    run_due_jobs()
    assert OutboxJob.objects.get().last_error == (
        f"{LEASE_EXPIRED_ERROR}; previous error: TimeoutError: smtp"
    )
    assert not LogLine.objects.exists()


def test_a_job_leased_to_a_live_runner_is_not_claimed(durable: HandlerRegistry) -> None:
    bump("h")
    OutboxJob.objects.update(
        attempts=1, lease_owner="alive", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert run_due_jobs().done == 0
    OutboxJob.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert run_due_jobs().done == 1  # its lease expired: the runner died, the job runs


def test_the_celery_task_and_the_command_run_due_jobs(durable: HandlerRegistry) -> None:
    bump("i")
    assert run_jobs.apply().get() == 1
    bump("j")
    out = io.StringIO()
    call_command("outbox_jobs", "--once", stdout=out)
    assert out.getvalue().strip() == "done 1, skipped 0, retried 0, failed 0"
    assert LogLine.objects.count() == 2


def test_the_command_exits_7_when_jobs_failed(
    handlers: HandlerRegistry, fast_retries: None
) -> None:
    handler(CounterBumped, on_commit="durable")(job_handlers.flaky)
    job_handlers.failures_left = 3
    bump("k")
    with pytest.raises(CommandError) as error:
        call_command("outbox_jobs", "--once", stdout=io.StringIO())
    assert error.value.returncode == 7
    assert "failed 1" in str(error.value)


def test_the_commit_kicks_the_job_runner(
    durable: HandlerRegistry, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[float] = []
    monkeypatch.setattr(kick, "_jobs_kicker", kick.Kicker(sent.append))
    relay_kicks: list[float] = []
    monkeypatch.setattr(kick, "_kicker", kick.Kicker(relay_kicks.append))
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": True}

    with transaction.atomic():
        counter = Counter(name="l")
        counter.bump()
        counter.save()
        assert not sent
    deadline = timezone.now() + timedelta(seconds=5)
    while not sent and timezone.now() < deadline:
        kick.jobs_kicker()._wanted.wait(0.05)
    assert len(sent) == 1
    assert not relay_kicks  # no outbox row was written


def test_an_event_that_cannot_be_stored_is_refused_at_the_save(
    handlers: HandlerRegistry,
) -> None:
    handler(CounterBumped, on_commit="durable")(job_handlers.log_bump)
    counter = Counter(name="m")
    counter.record_event(CounterBumped(counter_name="m", by=object()))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="CounterBumped event cannot be stored as JSON"):
        counter.save()
    assert not Counter.objects.exists()
    assert not OutboxJob.objects.exists()


def test_bad_job_settings_fail_the_system_checks(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "JOB_MAX_ATTEMPTS": 0, "JOB_LEASE_SECONDS": "1m"}
    messages = [str(message) for message in run_checks() if message.id == "outbox.E001"]
    assert any("JOB_MAX_ATTEMPTS" in message for message in messages)
    assert any("JOB_LEASE_SECONDS" in message for message in messages)


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_seconds=2.0, backoff_max_seconds=10.0)
    for attempts, full in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (40, 10.0)):
        delays = [policy.delay_after(attempts) for _ in range(50)]
        assert all(full / 2 <= delay <= full for delay in delays)


def test_a_job_being_run_is_not_claimed_by_a_second_runner(
    handlers: HandlerRegistry, settings: Any
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "JOB_LEASE_SECONDS": 1}
    handler(CounterBumped, on_commit="durable")(job_handlers.slow)
    bump("n")
    first: list[RunResult] = []
    runner = threading.Thread(target=lambda: first.append(run_in_thread()))
    runner.start()
    try:
        assert job_handlers.slow_started.wait(10)
        time.sleep(1.2)  # the first runner's lease has expired while its handler runs
        second = run_due_jobs()
    finally:
        job_handlers.slow_release.set()
        runner.join(10)

    assert (second.done, second.skipped) == (0, 0)  # its row is locked: skipped over
    assert first[0].done == 1
    assert list(LogLine.objects.values_list("text", flat=True)) == ["slow n"]


def run_in_thread() -> RunResult:
    try:
        return run_due_jobs()
    finally:
        connection.close()


def test_the_runner_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        run_due_jobs(batch_size=0)
    with pytest.raises(ValueError, match="time_budget must not be negative"):
        run_due_jobs(time_budget=-1)
