"""The repository against real PostgreSQL: round trips, concurrency conflicts, duplicate
commands, one INSERT per save, dispatch before commit, snapshots and upcasting."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from domain_events import (
    AggregateNotFoundError,
    ConcurrencyError,
    DomainEvent,
    DuplicateCommandError,
    EventStore,
    SerializationError,
    UpcastError,
    handler,
    upcaster,
)
from domain_events.models import AggregateVersion, Snapshot, StoredEvent
from domain_events.registry import HandlerRegistry
from domain_events.testing import isolated_upcasters
from tests.eventsourcing.aggregates import Tally, TallyAdded

pytestmark = pytest.mark.django_db

store = EventStore()


def new_tally(label: str = "t") -> Tally:
    tally = Tally.start(str(uuid4()), label, uuid4())
    store.save(tally)
    return tally


def stream(tally: Tally) -> list[tuple[int, str]]:
    return list(
        StoredEvent.objects.filter(aggregate_type="tests.tally", aggregate_id=tally.id)
        .order_by("version")
        .values_list("version", "event_type")
    )


def test_saved_events_load_back_with_their_field_types() -> None:
    owner = uuid4()
    tally = Tally.start("t-1", "groceries", owner)
    tally.add(Decimal("2.50"), "a", "b")
    store.save(tally, metadata={"correlation_id": "c-1"})
    assert tally.pending_events == ()
    assert tally.stored_version == 2

    loaded = store.get(Tally, "t-1")
    assert (loaded.label, loaded.total, loaded.additions, loaded.version) == (
        "groceries",
        Decimal("2.50"),
        1,
        2,
    )
    row = StoredEvent.objects.get(aggregate_id="t-1", version=1)
    assert row.event_type == "tests.TallyStarted"
    assert row.schema_version == 1
    assert row.data == {"label": "groceries", "owner_id": str(owner), "due": "2030-01-02"}
    assert row.metadata == {"correlation_id": "c-1"}
    assert AggregateVersion.objects.get(aggregate_id="t-1").version == 2


def test_loading_an_unknown_aggregate_raises() -> None:
    with pytest.raises(AggregateNotFoundError, match=re.escape("no tests.tally with id 'nope'")):
        store.get(Tally, "nope")


def test_a_stale_save_raises_and_writes_nothing() -> None:
    tally = new_tally()
    first, second = store.get(Tally, tally.id), store.get(Tally, tally.id)
    first.add(Decimal(1))
    store.save(first)
    second.add(Decimal(5))
    with pytest.raises(ConcurrencyError, match="loaded at version 1"):
        store.save(second)
    assert stream(tally) == [(1, "tests.TallyStarted"), (2, "tests.TallyAdded")]
    assert second.pending_events != ()  # kept, so the caller sees what was refused
    assert store.get(Tally, tally.id).total == Decimal(1)


def test_creating_an_aggregate_that_exists_raises() -> None:
    tally = new_tally()
    again = Tally.start(tally.id, "again", uuid4())
    with pytest.raises(ConcurrencyError):
        store.save(again)
    assert store.get(Tally, tally.id).label == "t"


def test_one_save_is_one_insert_of_all_its_events() -> None:
    tally = new_tally()
    for amount in range(100):
        tally.add(Decimal(amount))
    with CaptureQueriesContext(connection) as queries:
        store.save(tally)
    inserts = [q["sql"] for q in queries if "INSERT INTO domain_events_storedevent" in q["sql"]]
    assert len(inserts) == 1
    assert [v for v, _ in stream(tally)] == list(range(1, 102))


def test_handlers_run_in_the_saving_transaction_and_their_failure_rolls_back(
    handlers: HandlerRegistry,
) -> None:
    seen: list[Any] = []

    @handler(TallyAdded)
    def record_and_maybe_fail(event: TallyAdded) -> None:
        seen.append((event.amount, connection.in_atomic_block))
        if event.amount < 0:
            raise ValueError("negative")

    tally = new_tally()
    tally.add(Decimal(3))
    store.save(tally)
    assert seen == [(Decimal(3), True)]

    tally.add(Decimal(-1))
    with pytest.raises(ValueError, match="negative"):
        store.save(tally)
    assert [v for v, _ in stream(tally)] == [1, 2]
    assert AggregateVersion.objects.get(aggregate_id=tally.id).version == 2
    assert len(tally.pending_events) == 1


def test_a_duplicate_triggering_message_is_refused_and_writes_nothing() -> None:
    tally = new_tally()
    tally.add(Decimal(1))
    store.save(tally, triggering_message_id="msg-1")

    # The message is delivered again: the command runs on a freshly loaded aggregate.
    redelivered = store.get(Tally, tally.id)
    redelivered.add(Decimal(1))
    with pytest.raises(DuplicateCommandError, match="msg-1") as caught:
        store.save(redelivered, triggering_message_id="msg-1")
    assert caught.value.triggering_message_id == "msg-1"
    assert store.get(Tally, tally.id).total == Decimal(1)
    assert AggregateVersion.objects.get(aggregate_id=tally.id).version == 2

    # Another message, or the same message for another aggregate, is a new command.
    redelivered.add(Decimal(2))
    store.save(redelivered, triggering_message_id="msg-2")
    other = new_tally()
    other.add(Decimal(7))
    store.save(other, triggering_message_id="msg-1")
    assert store.get(Tally, tally.id).total == Decimal(4)


def test_an_event_that_is_not_json_is_refused_before_anything_is_written() -> None:
    tally = new_tally()
    tally.add(Decimal(1), object())  # type: ignore[arg-type]
    with pytest.raises(
        SerializationError, match=re.escape("tests.TallyAdded event cannot be stored")
    ):
        store.save(tally)
    assert [v for v, _ in stream(tally)] == [1]


def test_snapshot_plus_later_events_equals_all_events() -> None:
    tally = new_tally()
    for batch in range(5):
        for amount in range(7):
            tally.add(Decimal(f"{batch}.{amount}"))
        store.save(tally)
    # 36 events: snapshots were due at 10, 20, 30; the one kept is the latest, taken at the
    # save that went from 29 to 36.
    snapshot = Snapshot.objects.get(aggregate_id=tally.id)
    assert snapshot.version == 36
    tally.add(Decimal("0.5"))
    tally.add(Decimal("0.25"))
    store.save(tally)  # 38: no multiple of 10 crossed, no new snapshot
    assert Snapshot.objects.get(aggregate_id=tally.id).version == 36

    with CaptureQueriesContext(connection) as queries:
        from_snapshot = store.get(Tally, tally.id)
    assert any('"domain_events_snapshot"' in q["sql"] for q in queries)
    Snapshot.objects.filter(aggregate_id=tally.id).delete()
    from_events = store.get(Tally, tally.id)
    state = ("label", "total", "additions", "version")
    assert [getattr(from_snapshot, a) for a in state] == [getattr(from_events, a) for a in state]
    assert from_events.additions == 37


def test_a_snapshot_of_another_schema_is_ignored_not_misread() -> None:
    tally = new_tally()
    for amount in range(12):
        tally.add(Decimal(amount))
    store.save(tally)
    # An old layout of the state that restore_snapshot() cannot read.
    Snapshot.objects.filter(aggregate_id=tally.id).update(schema_version=0, state={"sum": 1})
    loaded = store.get(Tally, tally.id)
    assert (loaded.total, loaded.version) == (Decimal(66), 13)


def test_an_upcast_chain_brings_v1_events_to_v3() -> None:
    tally = new_tally()
    # Version 1 stored "value" as a number; v2 renamed it "amount"; v3 added "tags".
    StoredEvent.objects.create(
        event_id=uuid4(),
        aggregate_type="tests.tally",
        aggregate_id=tally.id,
        version=2,
        event_type="tests.TallyAdded",
        schema_version=1,
        data={"value": 4},
        occurred_at=dt.datetime.now(dt.UTC),
    )
    AggregateVersion.objects.filter(aggregate_id=tally.id).update(version=2)
    with isolated_upcasters():

        @upcaster("tests.TallyAdded", from_version=1)
        def rename_value(data: dict[str, Any]) -> dict[str, Any]:
            return {"amount": str(data.pop("value")), **data}

        # A gap in the chain (no 2 -> 3 step) is reported, not skipped.
        upcaster("tests.TallyAdded", from_version=3)(lambda data: data)
        with pytest.raises(
            UpcastError, match=re.escape("no upcaster for tests.TallyAdded from version 2")
        ):
            store.get(Tally, tally.id)

    with isolated_upcasters():
        upcaster("tests.TallyAdded", from_version=1)(rename_value)

        @upcaster("tests.TallyAdded", from_version=2)
        def add_tags(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "tags": ["migrated"]}

        loaded = store.get(Tally, tally.id)
        assert (loaded.total, loaded.version) == (Decimal(4), 2)

        # New events are written at the current schema version, 3.
        loaded.add(Decimal(1), "x")
        store.save(loaded)
        assert StoredEvent.objects.get(aggregate_id=tally.id, version=3).schema_version == 3


def test_an_event_from_a_newer_schema_is_refused() -> None:
    tally = new_tally()
    StoredEvent.objects.filter(aggregate_id=tally.id).update(schema_version=2)
    with pytest.raises(UpcastError, match="newer than this code's 1"):
        store.get(Tally, tally.id)


def test_saving_inside_an_outer_transaction_rolls_back_with_it() -> None:
    tally = Tally.start(str(uuid4()), "t", uuid4())

    def save_then_fail() -> None:
        with transaction.atomic():
            store.save(tally)
            raise RuntimeError("outer failure")

    with pytest.raises(RuntimeError):
        save_then_fail()
    assert not StoredEvent.objects.filter(aggregate_id=tally.id).exists()
    assert not AggregateVersion.objects.filter(aggregate_id=tally.id).exists()


def test_recording_an_event_without_apply_method_is_a_clear_error() -> None:
    tally = Tally("x")
    with pytest.raises(TypeError, match=r"Tally has no @applies\(Unapplied\) method"):
        tally.record(Unapplied())
    assert tally.pending_events == ()


@dataclass(frozen=True)
class Unapplied(DomainEvent, event_type="tests.Unapplied"):
    pass
