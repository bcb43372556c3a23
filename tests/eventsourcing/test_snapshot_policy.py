"""Snapshot policies against real PostgreSQL: by event count (the ``snapshot_every``
default), by event type, by time since the last snapshot, combined, and user-defined; a
snapshot of another schema is still ignored, never misread (docs/event-sourcing.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from domain_events import (
    DomainEvent,
    EventSourcedAggregate,
    EventStore,
    EveryNEvents,
    OnEventTypes,
    SnapshotContext,
    SnapshotPolicy,
    TimeSinceLastSnapshot,
    applies,
)
from domain_events.models import Snapshot
from tests.eventsourcing.aggregates import Tally

store = EventStore()


@dataclass(frozen=True)
class EntryPosted(DomainEvent, event_type="tests.EntryPosted"):
    cents: int


@dataclass(frozen=True)
class PeriodClosed(DomainEvent, event_type="tests.PeriodClosed"):
    pass


class Ledger(EventSourcedAggregate, aggregate_type="tests.ledger"):
    """Snapshots after each closed period."""

    # Annotated so that subclasses may set another kind of policy.
    snapshot_policy: ClassVar[SnapshotPolicy | None] = OnEventTypes(PeriodClosed)

    def __init__(self, aggregate_id: Any) -> None:
        super().__init__(aggregate_id)
        self.cents = 0
        self.closed_periods = 0

    def post(self, cents: int) -> None:
        self.record(EntryPosted(cents=cents))

    def close(self) -> None:
        self.record(PeriodClosed())

    @applies(EntryPosted)
    def _posted(self, event: EntryPosted) -> None:
        self.cents += event.cents

    @applies(PeriodClosed)
    def _closed(self, event: PeriodClosed) -> None:
        self.closed_periods += 1

    def snapshot_state(self) -> dict[str, Any]:
        return {"cents": self.cents, "closed": self.closed_periods}

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        self.cents = state["cents"]
        self.closed_periods = state["closed"]


class HourlyLedger(Ledger, aggregate_type="tests.hourly_ledger"):
    snapshot_policy = TimeSinceLastSnapshot(dt.timedelta(hours=1))


class BusyLedger(Ledger, aggregate_type="tests.busy_ledger"):
    snapshot_policy = EveryNEvents(5) | OnEventTypes(PeriodClosed)


class EveryThirdSinceSnapshot(SnapshotPolicy):
    """A rule of one's own: at least three events since the last snapshot."""

    def __init__(self) -> None:
        self.seen: list[SnapshotContext] = []

    def due(self, context: SnapshotContext) -> bool:
        self.seen.append(context)
        return context.events_since_snapshot >= 3


class CustomLedger(Ledger, aggregate_type="tests.custom_ledger"):
    snapshot_policy = EveryThirdSinceSnapshot()


def snapshot_version(aggregate: EventSourcedAggregate) -> int | None:
    row = Snapshot.objects.filter(
        aggregate_type=type(aggregate).aggregate_type, aggregate_id=aggregate.id
    ).first()
    return None if row is None else row.version


def saved(ledger: Ledger, *cents: int, close: bool = False) -> Ledger:
    for amount in cents:
        ledger.post(amount)
    if close:
        ledger.close()
    store.save(ledger)
    return ledger


def test_snapshot_every_is_the_default_event_count_policy() -> None:
    assert isinstance(Tally.snapshot_policy, EveryNEvents)
    assert Tally.snapshot_policy.events == 10
    assert repr(BusyLedger.snapshot_policy) == "EveryNEvents(5) | OnEventTypes(PeriodClosed)"


@pytest.mark.django_db
def test_by_event_type_a_snapshot_follows_each_closed_period() -> None:
    ledger = saved(Ledger(uuid4()), 100, 200, 300)
    assert snapshot_version(ledger) is None
    saved(ledger, 400, close=True)
    assert snapshot_version(ledger) == 5
    saved(ledger, 1, 2, 3, 4, 5, 6)
    assert snapshot_version(ledger) == 5  # no period closed since

    with CaptureQueriesContext(connection) as queries:
        loaded = store.get(Ledger, ledger.id)
    assert (loaded.cents, loaded.closed_periods, loaded.version) == (1021, 1, 11)
    events_query = next(q["sql"] for q in queries if '"domain_events_storedevent"' in q["sql"])
    assert '"version" > 5' in events_query  # only the events after the snapshot were read


@pytest.mark.django_db
def test_by_time_at_most_one_snapshot_per_interval() -> None:
    ledger = saved(HourlyLedger(uuid4()), 1)
    assert snapshot_version(ledger) == 1  # none yet: the first save takes one
    saved(ledger, 2)
    saved(store.get(HourlyLedger, ledger.id), 3)
    assert snapshot_version(ledger) == 1

    # The snapshot ages past the interval: the next save of a freshly loaded ledger takes one.
    Snapshot.objects.filter(aggregate_id=ledger.id).update(
        taken_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=61)
    )
    reloaded = saved(store.get(HourlyLedger, ledger.id), 4)
    assert snapshot_version(ledger) == 4
    saved(reloaded, 5)
    assert snapshot_version(ledger) == 4
    assert store.get(HourlyLedger, ledger.id).cents == 15


@pytest.mark.django_db
def test_combined_policies_are_due_when_either_is() -> None:
    ledger = saved(BusyLedger(uuid4()), 1, 2, 3)
    assert snapshot_version(ledger) is None
    saved(ledger, 4, 5)
    assert snapshot_version(ledger) == 5  # crossed 5 events
    saved(ledger, close=True)
    assert snapshot_version(ledger) == 6  # a period closed


@pytest.mark.django_db
def test_a_policy_of_ones_own_sees_each_save() -> None:
    policy = CustomLedger.snapshot_policy
    assert isinstance(policy, EveryThirdSinceSnapshot)
    ledger = saved(CustomLedger(uuid4()), 1, 2)
    saved(ledger, 3)
    saved(ledger, 4, 5)
    assert snapshot_version(ledger) == 3
    saved(ledger, 6)
    assert snapshot_version(ledger) == 6
    first, second, third, fourth = policy.seen[-4:]
    assert (first.previous_version, first.version, first.last_snapshot_version) == (0, 2, None)
    assert (second.version, second.events_since_snapshot) == (3, 3)
    assert [type(e) for e in second.new_events] == [EntryPosted]
    assert (third.last_snapshot_version, third.events_since_snapshot) == (3, 2)
    assert third.last_snapshot_at is not None
    assert fourth.aggregate is ledger


@pytest.mark.django_db
def test_a_snapshot_of_another_schema_is_ignored_under_any_policy() -> None:
    ledger = saved(HourlyLedger(uuid4()), 10, 20)
    # An old layout that restore_snapshot() would misread (or fail on), at a later version.
    Snapshot.objects.filter(aggregate_id=ledger.id).update(
        schema_version=0, version=2, state={"cents": 999_999}
    )

    loaded = store.get(HourlyLedger, ledger.id)
    assert (loaded.cents, loaded.version) == (30, 2)
    # No usable snapshot, so the time policy takes one now, in the current schema.
    saved(loaded, 5)
    row = Snapshot.objects.get(aggregate_id=ledger.id)
    assert (row.version, row.schema_version, row.state) == (3, 1, {"cents": 35, "closed": 0})


def test_policies_are_checked_when_defined() -> None:
    with pytest.raises(TypeError, match="sets both snapshot_every and snapshot_policy"):

        class Both(Ledger, aggregate_type="tests.both"):
            snapshot_every = 10
            snapshot_policy = EveryNEvents(10)

    with pytest.raises(TypeError, match="snapshot_policy must be a SnapshotPolicy or None"):

        class NotAPolicy(Ledger, aggregate_type="tests.not_a_policy"):
            snapshot_policy = 10  # type: ignore[assignment]

    with pytest.raises(TypeError, match="must define snapshot_state"):

        class NoState(EventSourcedAggregate, aggregate_type="tests.no_state"):
            snapshot_policy = OnEventTypes(PeriodClosed)

    for bad in (
        lambda: EveryNEvents(0),
        lambda: EveryNEvents(True),
        lambda: OnEventTypes(),
        lambda: OnEventTypes(int),  # type: ignore[arg-type]
        lambda: TimeSinceLastSnapshot(dt.timedelta(0)),
        lambda: TimeSinceLastSnapshot(3600),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError):
            bad()

    class NoSnapshots(Ledger, aggregate_type="tests.no_snapshots"):
        snapshot_policy = None

    assert NoSnapshots.snapshot_policy is None
