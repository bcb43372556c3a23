"""Registering integration handlers, topic patterns and the consumer command's checks."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from outbox import IncomingMessage, integration_handler
from outbox.consumer.registry import registry
from outbox.exceptions import InvalidHandlerError, UnknownConsumerError
from outbox.wire import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("orders.order_placed", "orders.order_placed", True),
        ("orders.order_placed", "orders.order_paid", False),
        ("orders.*", "orders.order_placed", True),
        ("orders.*", "orders.order_placed.v2", False),
        ("orders.#", "orders", True),
        ("orders.#", "orders.a.b", True),
        ("#", "anything.at.all", True),
        ("*.order_placed", "orders.order_placed", True),
        ("#.placed", "orders.order.placed", True),
        ("#.placed", "orders.order.paid", False),
    ],
)
def test_topic_patterns_match_like_rabbitmq_bindings(
    pattern: str, key: str, expected: bool
) -> None:
    assert topic_matches(pattern, key) is expected


def test_handlers_are_grouped_by_consumer_and_matched_by_event_type() -> None:
    def placed(message: IncomingMessage) -> None: ...

    def anything(message: IncomingMessage) -> None: ...

    with registry.isolated():
        integration_handler("orders.order_placed", consumer="billing")(placed)
        integration_handler("orders.#", consumer="billing")(anything)
        integration_handler("orders.#", consumer="billing")(anything)  # a re-import
        integration_handler("orders.#", consumer="audit")(anything)
        billing = registry.get("billing")
        assert billing.binding_keys == ("orders.order_placed", "orders.#")
        assert billing.handlers_for("orders.order_placed") == (placed, anything)
        assert billing.handlers_for("orders.order_paid") == (anything,)
        assert billing.handlers_for("users.created") == ()
        assert "audit" in registry.names()
    assert "billing" not in registry.names()


@pytest.mark.parametrize(
    ("pattern", "consumer"),
    [("", "c"), ("orders..placed", "c"), ("orders placed", "c"), ("o", ""), ("o", "a b")],
)
def test_bad_patterns_and_consumer_names_are_refused(pattern: str, consumer: str) -> None:
    with registry.isolated(), pytest.raises(InvalidHandlerError, match=r"consumer name|pattern"):
        integration_handler(pattern, consumer=consumer)(lambda message: None)


def test_unknown_consumer_names_the_known_ones() -> None:
    with pytest.raises(UnknownConsumerError, match=r"registered consumers: .*shipping"):
        registry.get("nope")
    with pytest.raises(CommandError, match="no integration handler is registered"):
        call_command("outbox_consume", "nope")
    with pytest.raises(CommandError, match="--max-messages must be at least 1"):
        call_command("outbox_consume", "shipping", "--max-messages", "0")
