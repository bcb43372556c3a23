"""The "newest state per aggregate" recipe of docs/consumers.md (blocks tagged
``test:newest-state``): run against PostgreSQL with messages arriving out of order."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from outbox.consumer.processing import process_batch
from outbox.consumer.registry import IncomingMessage, registry
from tests.docs.markdown import tagged

pytestmark = pytest.mark.django_db

TABLE = """
CREATE TABLE parcel_location (
    parcel_id text PRIMARY KEY, location text NOT NULL, position bigint NOT NULL
)
"""


def moved(parcel: str, location: str, position: int | None) -> IncomingMessage:
    return IncomingMessage(
        consumer="tracking",
        message_id=str(uuid.uuid4()),
        event_type="parcels.moved",
        payload={"location": location},
        aggregate_type="parcel",
        aggregate_id=parcel,
        position=position,
    )


def test_only_the_newest_state_of_each_aggregate_is_kept() -> None:
    [block] = tagged("newest-state")
    assert block.page == "docs/consumers.md"
    with connection.cursor() as cursor:
        cursor.execute(TABLE)  # rolled back with the test's transaction
    with registry.isolated():
        exec(compile(block.text, block.where, "exec"), {})  # registers the handler
        spec = registry.get("tracking")
        # Delivered out of order: a retry of position 7 arrives after position 9.
        messages = [
            moved("p1", "depot", 5),
            moved("p1", "van", 9),
            moved("p2", "depot", 6),
            moved("p1", "hub", 7),
            moved("p1", "nowhere", None),
        ]
        outcomes = process_batch(spec, messages)

    assert [outcome.kind for outcome in outcomes] == ["processed"] * 4 + ["failed"]
    assert "has no position" in outcomes[-1].error_message
    with connection.cursor() as cursor:
        cursor.execute("SELECT parcel_id, location, position FROM parcel_location ORDER BY 1")
        assert cursor.fetchall() == [("p1", "van", 9), ("p2", "depot", 6)]
