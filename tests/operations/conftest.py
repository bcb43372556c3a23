"""Fixtures for the operations tests: outbox rows in any state, at any age."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

import pytest
from django.utils import timezone

from outbox.models import DeadLetter, OutboxMessage


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


@pytest.fixture
def make_dead_letter() -> Callable[..., DeadLetter]:
    """Insert a dead-letter record as the consumer would have written it."""

    def make(**fields: Any) -> DeadLetter:
        message_id = str(uuid.uuid4())
        values: dict[str, Any] = {
            "consumer": "shipping",
            "queue": "events.shipping",
            "message_id": message_id,
            "event_type": "orders.order_placed",
            "routing_key": "orders.order_placed",
            "aggregate_type": "order",
            "aggregate_id": "42",
            "payload": {"order_id": 42},
            "body": b'{"order_id": 42}',
            "headers": {"aggregate_type": "order", "aggregate_id": "42"},
            "properties": {"content_type": "application/json"},
            "reason": "handler failed",
            "error_type": "builtins.KeyError",
            "error": "'sku'",
            "traceback": (
                "Traceback (most recent call last):\n  File \"shop/handlers.py\"\nKeyError: 'sku'\n"
            ),
            "attempts": 5,
        }
        values.update(fields)
        return DeadLetter.objects.create(**values)

    return make
