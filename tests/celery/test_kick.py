"""The kick on commit, in one process: when a kick is asked for, how kicks coalesce, and
that a failing Celery broker never reaches the business transaction.

The kicker's send is replaced by a recorder here; tests/celery/test_kick_worker.py sends real
tasks to a real Celery worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core.checks import run_checks
from django.db import connection, transaction

from outbox import Message, kick, publish, publish_many
from outbox.models import OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """A send function that records its calls; ``fail`` makes it raise like a broker down."""

    def __init__(self, *, duration: float = 0.0) -> None:
        self.calls: list[float] = []
        self.duration = duration
        self.fail: Exception | None = None
        self.called = threading.Condition()

    def __call__(self, kicked_at: float) -> None:
        time.sleep(self.duration)
        with self.called:
            self.calls.append(kicked_at)
            self.called.notify_all()
        if self.fail is not None:
            raise self.fail

    def wait_for(self, count: int, timeout: float = 10.0) -> list[float]:
        with self.called:
            self.called.wait_for(lambda: len(self.calls) >= count, timeout)
            return list(self.calls)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Recorder:
    """The kick on, sending into a recorder instead of Celery."""
    recording = Recorder()
    monkeypatch.setattr(kick, "_kicker", kick.Kicker(recording))
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": True}
    return recording


def settle() -> None:
    """Give the kick thread time to send anything it was asked for (for negative checks)."""
    time.sleep(3 * kick.MIN_INTERVAL_SECONDS + 0.1)


def test_a_commit_sends_one_kick_for_all_its_rows(recorder: Recorder) -> None:
    before = time.time()
    with transaction.atomic():
        for n in range(50):
            publish("orders.placed", {"n": n})
        publish_many(Message("orders.placed", {"n": n}) for n in range(50, 60))
        assert recorder.calls == []  # nothing before the commit
    [kicked_at] = recorder.wait_for(1)
    settle()
    assert recorder.calls == [kicked_at]
    assert kicked_at >= before


def test_one_on_commit_callback_per_transaction(recorder: Recorder) -> None:
    with transaction.atomic():
        for n in range(20):
            publish("orders.placed", {"n": n})
        callbacks = [entry[1] for entry in transaction.get_connection().run_on_commit]
    assert callbacks.count(kick._request) == 1


def test_a_rollback_sends_no_kick(recorder: Recorder) -> None:
    def write_then_fail() -> None:
        with transaction.atomic():
            publish("orders.placed", {"n": 1})
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        write_then_fail()
    settle()
    assert recorder.calls == []
    assert not OutboxMessage.objects.exists()


def test_a_row_written_after_a_rolled_back_savepoint_still_kicks(recorder: Recorder) -> None:
    with transaction.atomic():
        try:
            with transaction.atomic():
                publish("orders.placed", {"n": 1})  # registers the callback in the savepoint
                raise RuntimeError("savepoint rolled back")
        except RuntimeError:
            pass
        publish("orders.placed", {"n": 2})
    assert len(recorder.wait_for(1)) == 1


def test_rows_only_in_a_rolled_back_savepoint_send_no_kick(recorder: Recorder) -> None:
    with transaction.atomic():
        try:
            with transaction.atomic():
                publish("orders.placed", {"n": 1})
                raise RuntimeError("savepoint rolled back")
        except RuntimeError:
            pass
    settle()
    assert recorder.calls == []


@pytest.mark.parametrize("value", [False, None])
def test_off_or_auto_without_celery_sends_nothing(
    recorder: Recorder, settings: Any, value: bool | None
) -> None:
    # None is auto: the autouse fixture of tests/conftest.py makes Celery look unconfigured.
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": value}
    with transaction.atomic():
        publish("orders.placed", {"n": 1})
    settle()
    assert recorder.calls == []


def test_auto_is_on_when_celery_has_a_broker_url(
    recorder: Recorder, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kick, "_celery_ready", None)  # detect again
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": None}
    assert kick.celery_configured()  # the test settings name Redis as Celery's broker
    with transaction.atomic():
        publish("orders.placed", {"n": 1})
    assert len(recorder.wait_for(1)) == 1


def test_a_burst_of_commits_coalesces(recorder: Recorder) -> None:
    """Commits from eight threads as fast as they go: kicks stay MIN_INTERVAL_SECONDS apart,
    so far fewer kicks than commits, and the last commit is still followed by a kick."""
    recorder.duration = 0.002  # a send to Redis takes about a millisecond
    commits = 400

    def write(start: int) -> None:
        try:
            for n in range(start, start + commits // 8):
                with transaction.atomic():
                    publish("orders.placed", {"n": n})
        finally:
            connection.close()  # each thread has its own connection

    started = time.monotonic()
    threads = [threading.Thread(target=write, args=(k * commits // 8,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last_commit = time.time()
    elapsed = time.monotonic() - started
    settle()
    calls = list(recorder.calls)
    assert OutboxMessage.objects.count() == commits
    assert len(calls) <= elapsed / kick.MIN_INTERVAL_SECONDS + 2, (len(calls), elapsed)
    assert len(calls) < commits
    assert calls[-1] >= last_commit - 0.001  # a kick sent after the last commit


def test_a_broker_down_is_logged_once_and_never_reaches_the_caller(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kick, "RETRY_AFTER_SECONDS", 0.05)
    recorder.fail = ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")
    with caplog.at_level(logging.INFO, logger="outbox.relay"):
        for n in range(3):
            with transaction.atomic():  # the commit returns normally
                publish("orders.placed", {"n": n})
        recorder.wait_for(4)  # the first send and retries while the broker stays down
        warnings = [r for r in caplog.records if getattr(r, "event", "") == "kick_failed"]
        assert len(warnings) == 1
        assert "Error 111" in warnings[0].getMessage()
        recorder.fail = None
        sent_before = kick.kicker().sent
        deadline = time.monotonic() + 10
        while kick.kicker().sent == sent_before and time.monotonic() < deadline:
            time.sleep(0.01)
    assert OutboxMessage.objects.count() == 3
    assert kick.kicker().sent > sent_before  # kicks resume by themselves
    assert [r for r in caplog.records if getattr(r, "event", "") == "kick_resumed"]


def test_a_forked_child_starts_its_own_kicker(recorder: Recorder) -> None:
    parent = kick.kicker()
    parent.request()
    recorder.wait_for(1)
    kick._renew_after_fork()  # what os.register_at_fork runs in the child
    child = kick.kicker()
    assert child is not parent
    assert child._thread is None  # no thread inherited: the child's first request starts one
    child.request()
    assert len(recorder.wait_for(2)) == 2  # same send function


def test_the_check_refuses_kick_on_without_celery(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kick, "celery_configured", lambda: False)
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": True}
    assert "outbox.E010" in ids(run_checks)
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": None}
    assert "outbox.E010" not in ids(run_checks)
    settings.OUTBOX = {**settings.OUTBOX, "KICK_ON_COMMIT": "yes"}
    assert "outbox.E001" in ids(run_checks)


def ids(run: Callable[[], list[Any]]) -> set[str]:
    return {message.id for message in run()}
