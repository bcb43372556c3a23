"""Logic of the event store that needs no database: class checks, serialization, upcasting."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.management import CommandError, call_command

from domain_events import (
    DomainEvent,
    EventSourcedAggregate,
    InvalidAggregateError,
    SerializationError,
    UpcastError,
    applies,
    upcaster,
)
from domain_events.eventsourcing.projections import Checkpoint
from domain_events.eventsourcing.serialization import event_from_data, event_json
from domain_events.eventsourcing.upcasting import (
    current_schema_version,
    isolated_upcasters,
    upcast,
)
from tests.eventsourcing.aggregates import Tally

COLLECTING = "tests.eventsourcing.test_projections.CollectingProjection"


@dataclass(frozen=True)
class Shaped(DomainEvent, event_type="tests.Shaped"):
    ids: list[UUID]
    window: tuple[dt.time, ...]
    due: dt.date | None
    wait: dt.timedelta
    price: Decimal
    extra: dict[str, Any]


def test_an_event_round_trips_through_json_with_its_field_types() -> None:
    event = Shaped(
        ids=[uuid4(), uuid4()],
        window=(dt.time(9, 30), dt.time(17)),
        due=None,
        wait=dt.timedelta(minutes=5),
        price=Decimal("1.10"),
        extra={"nested": [1, "a"]},
    )
    data = json.loads(event_json(event))
    assert data["price"] == "1.10"
    back = event_from_data(
        "tests.Shaped", data, event_id=event.event_id, occurred_at=event.occurred_at
    )
    assert back == event


def test_event_data_json_cannot_store_is_a_serialization_error() -> None:
    def shaped(extra: dict[str, Any]) -> Shaped:
        return Shaped(
            ids=[], window=(), due=None, wait=dt.timedelta(), price=Decimal(0), extra=extra
        )

    # The outbox's JSON rules: a lone surrogate and a real NUL are refused before the save...
    with pytest.raises(SerializationError, match="lone surrogate"):
        event_json(shaped({"text": "half \ud800"}))
    with pytest.raises(SerializationError, match="NUL"):
        event_json(shaped({"text": "\x00"}))
    # ...while the six characters backslash-u-0000 are ordinary text.
    assert json.loads(event_json(shaped({"text": "\\u0000"})))["extra"] == {"text": "\\u0000"}


def test_stored_data_that_does_not_fit_the_class_is_a_clear_error() -> None:
    decode = partial(event_from_data, event_id=uuid4(), occurred_at=dt.datetime.now(dt.UTC))
    with pytest.raises(SerializationError, match=r"fields \['colour'\].*register an upcaster"):
        decode("tests.Shaped", {"colour": "red"})
    with pytest.raises(SerializationError, match="does not fit Shaped"):
        decode("tests.Shaped", {"price": "1"})
    with pytest.raises(SerializationError, match=re.escape("'tests.Gone' has no DomainEvent")):
        decode("tests.Gone", {})


def test_upcasting_steps_define_the_current_version_and_run_in_order() -> None:
    with isolated_upcasters():
        assert current_schema_version("tests.Evolving") == 1
        upcaster("tests.Evolving", from_version=1)(lambda d: {**d, "trail": [*d["trail"], 2]})
        upcaster("tests.Evolving", from_version=2)(lambda d: {**d, "trail": [*d["trail"], 3]})
        assert current_schema_version("tests.Evolving") == 3
        assert upcast("tests.Evolving", 1, {"trail": [1]}) == {"trail": [1, 2, 3]}
        assert upcast("tests.Evolving", 3, {"trail": []}) == {"trail": []}
        with pytest.raises(ValueError, match="already has an upcaster from version 1"):
            upcaster("tests.Evolving", from_version=1)(lambda d: d)
        upcaster("tests.Broken", from_version=1)(lambda d: None)  # type: ignore[arg-type,return-value]
        with pytest.raises(UpcastError, match="returned NoneType, not a dict"):
            upcast("tests.Broken", 1, {})
    assert current_schema_version("tests.Evolving") == 1


def test_aggregate_classes_are_checked_when_defined() -> None:
    assert Tally.aggregate_type == "tests.tally"
    with pytest.raises(TypeError, match="must define snapshot_state"):

        class NoSnapshotMethods(EventSourcedAggregate):
            snapshot_every = 10

    with pytest.raises(InvalidAggregateError, match=r"BadName: aggregate_type .* got 'a:b'"):

        class BadName(EventSourcedAggregate, aggregate_type="a:b"):
            pass

    with pytest.raises(
        TypeError, match=re.escape("'tests.tally' is already used by tests.eventsourcing")
    ):

        class SameStream(EventSourcedAggregate, aggregate_type="tests.tally"):
            pass

    with pytest.raises(TypeError, match="@applies needs a DomainEvent subclass"):
        applies(int)  # type: ignore[arg-type]


def test_aggregate_ids_are_stored_as_strings() -> None:
    class Thing(EventSourcedAggregate):
        @applies(Shaped)
        def _shaped(self, event: Shaped) -> None:
            pass

    key = uuid4()
    assert Thing(key).id == str(key)
    assert Thing(7).id == "7"
    # One rule with the outbox's publish(), raised as the event store's own error, which is
    # also the TypeError / ValueError callers caught before.
    with pytest.raises(TypeError, match="aggregate_id must be a str, int or UUID"):
        Thing(True)
    with pytest.raises(ValueError, match="1 to 255 characters"):
        Thing("")
    with pytest.raises(InvalidAggregateError, match="NUL"):
        Thing("a\x00b")


def test_checkpoints_print_and_parse() -> None:
    assert str(Checkpoint(12, 5)) == "12:5"
    assert Checkpoint.parse(" 12:5 ") == Checkpoint(12, 5)
    assert Checkpoint(1, 99) < Checkpoint(2, 1)
    with pytest.raises(ValueError, match="<transaction_id>:<position>"):
        Checkpoint.parse("12")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tests.nowhere.Projection"], "cannot import 'tests.nowhere.Projection'"),
        (["tests.eventsourcing.aggregates.Tally"], "is not a Projection subclass"),
        ([COLLECTING, "--after", "12"], "<transaction_id>:<position>"),
        ([COLLECTING, "--rebuild", "--after", "1:2"], "cannot take --after"),
        ([COLLECTING, "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_the_project_command_refuses_bad_arguments(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("domain_events_project", *arguments)
