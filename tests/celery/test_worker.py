"""A real ``celery -A example_project worker --beat`` process on Redis relays committed outbox
rows to RabbitMQ and runs both purges, as the beat schedule of ``outbox.schedule`` says."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from outbox import publish
from outbox.models import InboxMessage, OutboxMessage
from tests.broker import BoundQueue
from tests.celery.worker import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s; worker log:\n{log.read_text()[-4000:]}")


def test_worker_with_beat_publishes_ready_rows_and_runs_both_purges(
    rabbit_queue: BoundQueue, tmp_path: Path
) -> None:
    long_ago = timezone.now() - timedelta(days=400)
    with transaction.atomic():
        ready = [
            publish("celery.tested", {"n": n}, exchange=rabbit_queue.exchange) for n in range(3)
        ]
        expired = publish("celery.expired", {}, exchange=rabbit_queue.exchange)
    OutboxMessage.objects.filter(pk=expired.pk).update(
        status=OutboxMessage.Status.PUBLISHED, published_at=long_ago
    )
    old_inbox = InboxMessage.objects.create(
        consumer="celery-test", message_id=str(uuid.uuid4()), processed_at=long_ago
    )

    with celery_worker(tmp_path, exchange=rabbit_queue.exchange) as worker:
        log = worker.log
        received = rabbit_queue.get(3, timeout=60)
        assert sorted(str(r.properties.message_id) for r in received) == sorted(
            str(m.message_id) for m in ready
        ), log.read_text()[-4000:]
        wait_until(
            lambda: not OutboxMessage.objects.filter(pk=expired.pk).exists(),
            60,
            "purge_outbox did not delete the expired published row",
            log,
        )
        wait_until(
            lambda: not InboxMessage.objects.filter(pk=old_inbox.pk).exists(),
            60,
            "purge_inbox did not delete the old inbox record",
            log,
        )
        wait_until(
            lambda: (
                set(
                    OutboxMessage.objects.filter(pk__in=[m.pk for m in ready]).values_list(
                        "status", flat=True
                    )
                )
                == {OutboxMessage.Status.PUBLISHED}
            ),
            30,
            "the published rows were not marked published",
            log,
        )
    text = worker.log.read_text()
    assert "Task outbox.tasks.publish_outbox[" in text
    assert "Task outbox.tasks.purge_outbox[" in text
    assert "Task outbox.tasks.purge_inbox[" in text


def test_worker_is_stopped_even_when_the_block_fails(tmp_path: Path) -> None:
    pids: list[int] = []

    def failing_body() -> None:
        with celery_worker(tmp_path, exchange="unused") as worker:
            pids.append(worker.pid)
            raise RuntimeError("the test body failed")

    with pytest.raises(RuntimeError):
        failing_body()
    [pid] = pids
    # The worker, its pool child and its beat process share one process group: none is left.
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
