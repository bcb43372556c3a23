"""``publish_outbox`` as a kick runs it: a kick that a finished drain already covered costs no
claim, a later one drains (real PostgreSQL and RabbitMQ, the task run in-process)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import transaction

from outbox import publish, tasks
from outbox.models import OutboxMessage
from tests.broker import BoundQueue
from tests.relay.conftest import consume, exchange

__all__ = ["exchange"]  # the fixture, imported for pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _forget_the_task_relay() -> Iterator[None]:
    """The task keeps its relay (and RabbitMQ connection) per thread: close it afterwards, so
    later tests start from a fresh one, as they would without these tests."""
    yield
    relay = getattr(tasks._local, "relay", None)
    if relay is not None:
        relay.close()
    for name in ("relay", "claims", "drained_since"):
        if hasattr(tasks._local, name):
            delattr(tasks._local, name)


def ready() -> int:
    return OutboxMessage.objects.filter(status=OutboxMessage.Status.READY).count()


def test_a_kick_sent_before_a_finished_drain_is_skipped(exchange: BoundQueue) -> None:
    with transaction.atomic():
        for n in range(3):
            publish("orders.placed", {"n": n})
    sent_before_the_drain = time.time()
    time.sleep(0.01)
    assert tasks.publish_outbox.apply().get() == 3  # beat's run: a whole drain

    with transaction.atomic():  # committed after that drain: its kick comes later
        publish("orders.placed", {"n": 3})
    # A stale kick, queued behind the drain: the drain claimed everything its commits wrote.
    assert tasks.publish_outbox.apply(kwargs={"kicked_at": sent_before_the_drain}).get() == 0
    assert ready() == 1  # skipped without a claim
    assert tasks.publish_outbox.apply(kwargs={"kicked_at": time.time()}).get() == 1
    assert ready() == 0
    assert len(consume(exchange, 4)) == 4


def test_a_kick_after_an_unfinished_drain_is_not_skipped(exchange: BoundQueue) -> None:
    """A drain stopped by its time budget may have left rows: it covers no kick."""
    with transaction.atomic():
        for n in range(3):
            publish("orders.placed", {"n": n})
    kicked_at = time.time()
    time.sleep(0.01)
    assert tasks.publish_outbox.apply(kwargs={"time_budget": 0.0}).get() >= 1  # out of time
    with transaction.atomic():
        publish("orders.placed", {"n": 3})
    assert tasks.publish_outbox.apply(kwargs={"kicked_at": kicked_at}).get() >= 1
    assert ready() == 0
