from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime
from uuid import UUID

import pytest

from domain_events import DomainEvent, EventTypeConflictError
from domain_events.events import event_class_for


@dataclass(frozen=True)
class ParcelShipped(DomainEvent):
    parcel_id: int
    carrier: str


@dataclass(frozen=True)
class ParcelShippedRenamed(DomainEvent, event_type="unit.ParcelLost"):
    parcel_id: int


def test_subclass_with_required_fields_gets_id_and_time_from_the_base() -> None:
    before = datetime.now(UTC)
    event = ParcelShipped(7, "dhl")
    assert event.parcel_id == 7
    assert event.carrier == "dhl"
    assert isinstance(event.event_id, UUID)
    assert before <= event.occurred_at <= datetime.now(UTC)
    assert event.occurred_at.tzinfo is not None


def test_each_event_gets_its_own_id() -> None:
    assert ParcelShipped(1, "a").event_id != ParcelShipped(1, "a").event_id


def test_events_are_immutable() -> None:
    event = ParcelShipped(1, "a")
    with pytest.raises(FrozenInstanceError):
        event.parcel_id = 2  # type: ignore[misc]


def test_base_fields_can_be_given_by_keyword() -> None:
    event_id = UUID(int=5)
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    event = ParcelShipped(1, "a", event_id=event_id, occurred_at=moment)
    assert (event.event_id, event.occurred_at) == (event_id, moment)


def test_type_name_defaults_to_the_class_name_not_the_import_path() -> None:
    assert ParcelShipped.event_type == "ParcelShipped"
    assert event_class_for("ParcelShipped") is ParcelShipped


def test_an_explicit_type_name_survives_renaming_the_class() -> None:
    assert ParcelShippedRenamed.event_type == "unit.ParcelLost"
    assert event_class_for("unit.ParcelLost") is ParcelShippedRenamed


def test_two_classes_cannot_share_a_type_name() -> None:
    with pytest.raises(EventTypeConflictError, match="already used by"):

        @dataclass(frozen=True)
        class Impostor(DomainEvent, event_type="ParcelShipped"):
            pass


def test_invalid_type_name_is_refused() -> None:
    with pytest.raises(EventTypeConflictError, match="not a valid name"):

        class Spaced(DomainEvent, event_type="has space"):
            pass


def test_unknown_type_name_lookup_names_it() -> None:
    with pytest.raises(KeyError, match=r"no\.such\.Event"):
        event_class_for("no.such.Event")


def test_a_non_frozen_subclass_is_refused_by_dataclasses() -> None:
    with pytest.raises(TypeError, match="frozen"):

        @dataclass
        class Mutable(DomainEvent):  # type: ignore[misc]
            value: int
