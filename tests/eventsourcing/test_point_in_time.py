"""Point-in-time reads and the audit trail against real PostgreSQL: ``get(..., version=N)``,
``get(..., as_of=datetime)`` and ``history()`` (docs/event-sourcing.md)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from uuid import uuid4

import pytest

from domain_events import (
    AggregateNotFoundError,
    ConcurrencyError,
    EventStore,
    InvalidAggregateError,
    VersionNotFoundError,
)
from domain_events.models import Snapshot, StoredEvent
from tests.eventsourcing.aggregates import Tally, TallyAdded, TallyStarted

pytestmark = pytest.mark.django_db

store = EventStore()


def tally_of(events: int, *, per_save: int = 1) -> Tally:
    """A tally with ``events`` events (one start, then adds of 1, 2, 3...), saved in chunks."""
    tally = Tally.start(str(uuid4()), "t", uuid4())
    for amount in range(1, events):
        tally.add(Decimal(amount))
        if tally.version % per_save == 0:
            store.save(tally, metadata={"request": f"r-{tally.version}"})
    store.save(tally)
    return tally


def recorded_at(tally: Tally, version: int) -> dt.datetime:
    return StoredEvent.objects.get(aggregate_id=tally.id, version=version).recorded_at


def test_a_version_rebuilds_the_state_after_that_event() -> None:
    tally = tally_of(6)
    for version in range(1, 7):
        past = store.get(Tally, tally.id, version=version)
        assert (past.version, past.additions) == (version, version - 1)
        assert past.total == sum(Decimal(a) for a in range(1, version))
    # The past is read-only in effect: a command on it cannot be saved over later events.
    past = store.get(Tally, tally.id, version=3)
    past.add(Decimal(100))
    with pytest.raises(ConcurrencyError):
        store.save(past)
    latest = store.get(Tally, tally.id, version=6)
    latest.add(Decimal(100))
    store.save(latest)
    assert store.get(Tally, tally.id).version == 7


def test_a_snapshot_taken_after_the_point_is_not_used_one_before_it_is() -> None:
    tally = tally_of(25)  # one save per event: the snapshot kept is the one at version 20
    assert Snapshot.objects.get(aggregate_id=tally.id).version == 20
    # Mark the snapshot's state, so a read that restored it shows the mark.
    Snapshot.objects.filter(aggregate_id=tally.id).update(
        state={"label": "from the snapshot", "total": "190", "additions": 19}
    )

    before = store.get(Tally, tally.id, version=15)
    assert (before.label, before.version, before.total) == ("t", 15, Decimal(105))

    at = store.get(Tally, tally.id, version=20)
    after = store.get(Tally, tally.id, version=22)
    assert (at.label, at.version) == ("from the snapshot", 20)
    assert (after.label, after.version, after.total) == ("from the snapshot", 22, Decimal(231))

    past = store.get(Tally, tally.id, as_of=recorded_at(tally, 19))
    assert (past.label, past.version) == ("t", 19)


def test_as_of_reads_the_events_recorded_by_then() -> None:
    tally = tally_of(6)
    third, fourth = recorded_at(tally, 3), recorded_at(tally, 4)
    assert third < fourth

    assert store.get(Tally, tally.id, as_of=third).version == 3
    assert store.get(Tally, tally.id, as_of=third + (fourth - third) / 2).version == 3
    # Another time zone names the same instant.
    in_kolkata = fourth.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert store.get(Tally, tally.id, as_of=in_kolkata).version == 4
    assert store.get(Tally, tally.id, as_of=fourth + dt.timedelta(days=365)).version == 6

    too_early = recorded_at(tally, 1) - dt.timedelta(microseconds=1)
    with pytest.raises(VersionNotFoundError, match=r"did not exist yet at .*first event was"):
        store.get(Tally, tally.id, as_of=too_early)


def test_points_that_cannot_be_read_are_clear_errors() -> None:
    tally = tally_of(3)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(TypeError, match=re.escape("get() takes version= or as_of=, not both")):
        store.get(Tally, tally.id, version=1, as_of=now)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="version must be at least 1"):
            store.get(Tally, tally.id, version=bad)
    for wrong_type in (True, "2", 2.0):
        with pytest.raises(TypeError, match="version must be an int"):
            store.get(Tally, tally.id, version=wrong_type)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="as_of must be an aware datetime, got the naive"):
        store.get(Tally, tally.id, as_of=dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="as_of must be a datetime"):
        store.get(Tally, tally.id, as_of=dt.date(2026, 1, 1))  # type: ignore[arg-type]

    with pytest.raises(
        VersionNotFoundError, match=f"tests.tally '{tally.id}' has no version 4: its stream ends"
    ) as beyond:
        store.get(Tally, tally.id, version=4)
    assert isinstance(beyond.value, AggregateNotFoundError)  # one except catches both
    # An aggregate that was never stored is not found, whatever the point.
    for point in ({"version": 1}, {"as_of": now}):
        with pytest.raises(AggregateNotFoundError) as unknown:
            store.get(Tally, "never-stored", **point)
        assert not isinstance(unknown.value, VersionNotFoundError)


def test_history_is_the_audit_trail_of_one_aggregate() -> None:
    tally = Tally.start(str(uuid4()), "audited", uuid4())
    store.save(tally, metadata={"user": "ann"}, triggering_message_id="req-1")
    tally.add(Decimal("1.25"), "x")
    tally.add(Decimal("2"))
    store.save(tally, metadata={"user": "bob"})
    tally_of(2)  # another aggregate's events are not in it

    trail = store.history(Tally, tally.id)

    assert [(r.version, r.event.event_type) for r in trail] == [
        (1, "tests.TallyStarted"),
        (2, "tests.TallyAdded"),
        (3, "tests.TallyAdded"),
    ]
    assert isinstance(trail[0].event, TallyStarted)
    assert isinstance(trail[1].event, TallyAdded)
    assert trail[1].event.amount == Decimal("1.25")
    assert [r.metadata for r in trail] == [{"user": "ann"}, {"user": "bob"}, {"user": "bob"}]
    assert [r.triggering_message_id for r in trail] == ["req-1", None, None]
    assert {(r.aggregate_type, r.aggregate_id) for r in trail} == {("tests.tally", tally.id)}
    assert trail[0].recorded_at < trail[1].recorded_at == trail[2].recorded_at
    assert [r.event.event_id for r in trail] == list(
        StoredEvent.objects.filter(aggregate_id=tally.id)
        .order_by("version")
        .values_list("event_id", flat=True)
    )

    with pytest.raises(AggregateNotFoundError, match=re.escape("no tests.tally with id 'nobody'")):
        store.history(Tally, "nobody")
    with pytest.raises(InvalidAggregateError):
        store.history(Tally, "")
