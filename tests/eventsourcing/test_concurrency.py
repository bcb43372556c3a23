"""Optimistic concurrency with real concurrent transactions, each thread on its own connection."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from uuid import uuid4

import pytest
from django.db import connection, transaction
from django.db.models import Count

from domain_events import ConcurrencyError, EventStore
from domain_events.models import AggregateVersion, StoredEvent
from tests.eventsourcing.aggregates import Tally

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16
store = EventStore()


def race(prepare: Callable[[int], Tally]) -> Counter[str]:
    """Each thread prepares its aggregate, waits for the others, then saves; returns outcomes."""
    barrier = threading.Barrier(THREADS)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def run(number: int) -> None:
        try:
            tally = prepare(number)
            barrier.wait(timeout=30)
            try:
                with transaction.atomic():
                    store.save(tally)
                outcome = "saved"
            except ConcurrencyError:
                outcome = "conflict"
            except Exception as error:  # reported by the assertion below
                outcome = f"unexpected {error!r}"
            with lock:
                outcomes[outcome] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def assert_no_duplicate_versions(aggregate_id: str) -> None:
    duplicates = (
        StoredEvent.objects.filter(aggregate_id=aggregate_id)
        .values("version")
        .annotate(n=Count("position"))
        .filter(n__gt=1)
    )
    assert not duplicates.exists()


@pytest.mark.slow
def test_sixteen_saves_at_the_same_version_one_wins() -> None:
    tally = Tally.start(str(uuid4()), "race", uuid4())
    with transaction.atomic():
        store.save(tally)

    def deposit(number: int) -> Tally:
        loaded = store.get(Tally, tally.id)
        loaded.add(Decimal(number), f"thread-{number}")
        loaded.add(Decimal(1))
        return loaded

    outcomes = race(deposit)
    assert outcomes == {"saved": 1, "conflict": THREADS - 1}
    assert AggregateVersion.objects.get(aggregate_id=tally.id).version == 3
    assert StoredEvent.objects.filter(aggregate_id=tally.id).count() == 3
    assert_no_duplicate_versions(tally.id)
    winner = StoredEvent.objects.get(aggregate_id=tally.id, version=2).data["tags"]
    assert store.get(Tally, tally.id).total == Decimal(winner[0].split("-")[1]) + 1


@pytest.mark.slow
def test_sixteen_creations_of_the_same_aggregate_one_wins() -> None:
    aggregate_id = str(uuid4())
    outcomes = race(lambda number: Tally.start(aggregate_id, f"creator-{number}", uuid4()))
    assert outcomes == {"saved": 1, "conflict": THREADS - 1}
    assert StoredEvent.objects.filter(aggregate_id=aggregate_id).count() == 1
    assert AggregateVersion.objects.get(aggregate_id=aggregate_id).version == 1
