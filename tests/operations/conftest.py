"""Fixtures for the operations tests: outbox rows in any state, at any age."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

import pytest
from django.utils import timezone

from outbox.models import OutboxMessage


class MakeMessage(Protocol):
    def __call__(
        self,
        status: str = ...,
        *,
        age: timedelta = ...,
        published_ago: timedelta | None = ...,
        **fields: Any,
    ) -> OutboxMessage: ...


@pytest.fixture
def make_message() -> MakeMessage:
    """Insert an outbox row directly, as the relay would have left it.

    ``age`` sets ``created_at`` that long ago; a published row is published ``published_ago``
    (default: just now).
    """
    counter = iter(range(1_000_000))

    def make(
        status: str = OutboxMessage.Status.READY,
        *,
        age: timedelta = timedelta(0),
        published_ago: timedelta | None = None,
        **fields: Any,
    ) -> OutboxMessage:
        now = timezone.now()
        number = next(counter)
        values: dict[str, Any] = {
            "event_type": "orders.order_placed",
            "routing_key": "orders.order_placed",
            "exchange": "events",
            "aggregate_type": "order",
            "aggregate_id": str(number),
            "payload": {"order_id": number},
            "status": status,
            "created_at": now - age,
            "next_attempt_at": now - age,
        }
        if status == OutboxMessage.Status.PUBLISHED:
            values["published_at"] = now - (published_ago or timedelta(0))
        values.update(fields)
        values.setdefault("ordering_key", f"{values['aggregate_type']}:{values['aggregate_id']}")
        return OutboxMessage.objects.create(**values)

    return make


def refreshed(row: OutboxMessage) -> OutboxMessage:
    """The row as the database has it now."""
    return OutboxMessage.objects.get(pk=row.pk)
